"""The intake role: other tools' telemetry -> usage events (DESIGN §1, §2), with no code change in the agents.

``finops intake run`` serves OTLP/HTTP (:mod:`.receiver`); each source family has one pure mapping module
(:mod:`.genai`, :mod:`.claude_code`, ...) that turns spans or log records into :class:`.calls.Call`; events go out
through the producer SDK (acknowledged or spooled before the HTTP answer). Needs the ``intake`` extra.
"""
