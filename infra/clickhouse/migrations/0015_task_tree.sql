-- Task trees (sub-agents): one row per task with its OWN cost and calls, its outcome and the parent edges it
-- claims. The rollup (a task plus every sub-agent task below it, each call counted once) is not SQL: it is
-- finops.task_tree.compute_task_forest over these rows, because a tree may hold a diamond (two parents claim one
-- child), a cycle or a parent that arrived after its children, and a recursive CTE would count a diamond's
-- subtree twice and recurse around a cycle until its depth limit. The rules live in that module's docstring.
--
-- Per event first (GROUP BY source, event_id), then per task: the event's cost is its original plus every
-- re-rating correction; its dimensions, time and outcome come from the original; it is unpriced while its
-- original is unpriced and no correction has priced it (the chargeback's rule). An unpriced call is counted in
-- own_unpriced_calls and own_unpriced_tokens (input + output), never as $0 of cost.
-- parent_claims: one (parent_task_id, first_seen_at, first_event_id) per distinct parent a call of the task named,
-- at the first call that named it, ordered by (first_seen_at, first_event_id, parent_task_id); parent_task_id is
-- the first of them (the chosen parent), '' for a root.
CREATE VIEW IF NOT EXISTS {database}.v_task_nodes
AS WITH events AS
(
    SELECT
        source,
        event_id,
        anyIf(task_id, row_kind = 'original') AS task_id,
        anyIf(parent_task_id, row_kind = 'original') AS parent_task_id,
        anyIf(team, row_kind = 'original') AS team,
        anyIf(project, row_kind = 'original') AS project,
        anyIf(agent_id, row_kind = 'original') AS agent_id,
        anyIf(task_type, row_kind = 'original') AS task_type,
        minIf(occurred_at, row_kind = 'original') AS occurred_at,
        anyIf(status, row_kind = 'original') AS status,
        maxIf(attempt, row_kind = 'original') AS attempt,
        sum(cost_usd) AS cost_usd,
        sumIf(input_tokens + output_tokens, row_kind = 'original') AS tokens,
        countIf(row_kind = 'original') > 0 AS has_original,
        countIf(row_kind = 'original' AND pricing_status = 'unpriced') > 0
            AND countIf(row_kind = 'correction' AND pricing_status = 'priced') = 0 AS unpriced
    FROM {database}.usage_ledger FINAL
    GROUP BY source, event_id
    HAVING has_original AND task_id != ''
),
tasks AS
(
    SELECT
        task_id,
        argMin(team, (occurred_at, event_id)) AS team,
        argMin(project, (occurred_at, event_id)) AS project,
        argMin(agent_id, (occurred_at, event_id)) AS agent_id,
        argMin(task_type, (occurred_at, event_id)) AS task_type,
        sum(cost_usd) AS own_cost_usd,
        count() AS own_calls,
        countIf(unpriced) AS own_unpriced_calls,
        sumIf(tokens, unpriced) AS own_unpriced_tokens,
        min(occurred_at) AS first_call_at,
        max(occurred_at) AS last_call_at,
        -- the task's outcome is the outcome of its last call (ties on occurred_at broken by the higher attempt), as
        -- in v_cost_per_task
        argMax(status, (occurred_at, attempt)) AS status,
        arraySort(c -> (c.2, c.3, c.1),
            groupArrayIf((parent_task_id, occurred_at, event_id), parent_task_id != '')) AS claims_in_order
    FROM events
    GROUP BY task_id
)
SELECT
    task_id, team, project, agent_id, task_type, own_cost_usd, own_calls, own_unpriced_calls, own_unpriced_tokens,
    first_call_at, last_call_at, status,
    toBool(status = 'ok') AS succeeded,
    -- the first claim of each distinct parent (claims_in_order is already in first-seen order)
    arrayFilter((c, i) -> indexOf(arrayMap(x -> x.1, claims_in_order), c.1) = i,
        claims_in_order, arrayEnumerate(claims_in_order)) AS parent_claims,
    if(empty(parent_claims), '', parent_claims[1].1) AS parent_task_id,
    length(parent_claims) AS claimed_parents
FROM tasks
COMMENT 'Per task: own cost (priced calls, corrections included), own calls, unpriced calls and tokens, first/last call, outcome (last call) and the parents its calls claimed (first seen first); roll up with finops.task_tree'
;
