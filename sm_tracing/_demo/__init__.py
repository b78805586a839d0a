"""``sm-tracing demo`` and the ``sm-tracing`` command: one trace from a boto3 client into a
model container, run on this machine (:mod:`.demo`), with the Flask container it starts
(:mod:`.app`), the OTLP receiver that collects every process's spans (:mod:`.receiver`) and
the text rendering of the traces (:mod:`.tree`)."""
