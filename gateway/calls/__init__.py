"""A call through the gateway, live or batch; one idea per module.

- ``errors``: the error codes clients see, InputError, NotFoundError, StageError.
- ``inputs``: the input rules and limits; the validated CallInfo, UtteranceInput, AudioInputFormat.
- ``events``: the live events pushed to a call's subscribers (the CallUpdate union) and CallOutcome.
- ``fanout``: Subscription, one subscriber's bounded queue.
- ``settings``: SessionSettings, the queue bounds, timeouts and limits of a gateway's calls.
- ``stages``: the chopper, scorer and ASR stubs, and their answers as UtteranceScores.
- ``audio``: a live call's audio cut into chunks for the ASR.
- ``session``: CallSession, the per-call live pipeline.
- ``finish``: finish_call, the one end of a call (live and batch).
- ``registry``: SessionRegistry (the live calls of this replica) and CallDriver (one client's side).
- ``service``: the Gateway facade (what a process holds) and the batch path.

Transports import ``errors``, ``inputs``, ``events`` and the facade ``service`` (``fanout`` and
``registry`` only where they need a Subscription or a CallDriver).
"""
