"""After the call: objection tags, the manager's summary, CRM fields and webhooks, daily roll-ups and alerts.

Plain modules that know nothing of gRPC or HTTP; the CallSession runs them when a call ends.
"""
