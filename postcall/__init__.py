"""The post-call worker (``python -m postcall``): what happens after a call, out of the gateway.

- ``server``: the ``PostCall`` gRPC service (``Report``: the report of a finished call, built in a thread).
- ``reports``: tags plus summary into one report, and the sweep that completes the reports a gateway could
  not get when its call ended.
- ``objections`` + ``objection_encoder`` + ``encoder`` (+ ``objection_adapters/``, what fine-tuning
  changed in MiniLM, a file per fit, and ``objection_examples.json``, training sentences):
  objection tags (phrase rules and a fine-tuned MiniLM classifier, in NumPy; or an LLM endpoint).
- ``summary``: the manager's report (spikes, turning points, quarters, lines).
- ``webhooks``: the outbox dispatcher (signing, delivery, retries) and ``callsense webhooks requeue``.
- ``rollup``: the daily roll-ups, their Slack alerts, the nightly scheduler and ``callsense rollup``.
- ``drift`` (+ ``drift_baseline.json``, written by ``callsense drift baseline``), ``drift_rule``,
  ``drift_job``: each tenant's day of model input as drift indicators, checked against its trailing days
  and the training text, run with the roll-up; its Slack alert and metrics.
- ``outbox_store``, ``rollup_store``, ``report_store``, ``drift_store``: the worker's repositories over its
  tables.
"""
