"""The jobsd wire protocol: the only package that knows how messages look.

``framing`` (frames, commands, msgpack, error codes), ``fields`` (typed
access to bodies), ``options`` and ``backoff`` (a job's options, checked
once), ``producer`` (requests, replies, the job view, the args envelope) and
``worker`` (HELLO, JOB, reports). ``PROTOCOL.md`` is the specification.
"""
