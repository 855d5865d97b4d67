-- Counts and offsets in range, checked by the engine. The ledger and spend sinks hand ClickHouse Avro containers
-- (DESIGN §6), and ClickHouse's Avro reader stores a negative Avro long in a UInt64 column (a negative int in a
-- UInt32) as its two's complement instead of refusing the row, as the row path's client did. A wrapped negative is
-- 2^63 or more (UInt64) or 2^31 or more (UInt32), far above any real count, so these checks refuse exactly those
-- rows: the insert fails (VIOLATED_CONSTRAINT), the sink bisects it and dead-letters the event with the reason.
ALTER TABLE {database}.usage_ledger
    ADD CONSTRAINT IF NOT EXISTS counts_not_negative CHECK
    greatest(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
             reasoning_tokens, input_audio_tokens, output_audio_tokens, cache_audio_read_tokens, image_tokens,
             web_search_calls, source_offset, ifNull(latency_ms, 0)) < 9223372036854775808
    AND greatest(requests, source_partition) < 2147483648;

ALTER TABLE {database}.spend_1m
    ADD CONSTRAINT IF NOT EXISTS counts_not_negative CHECK
    greatest(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, calls, errors,
             retries, unpriced_calls) < 9223372036854775808
    AND source_partition < 2147483648;
