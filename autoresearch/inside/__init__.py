"""inside: the code that runs INSIDE a sandbox, next to agent code or a human's eval script.

    model_server  EVAL's model server: agent code answers the trusted scorer over the protocol
    array_server  the evaluator split's model server (eval.model)
    evalclient    the eval script's handle on the model (`from autoresearch.inside.evalclient import model`)
    protocol      the EVAL wire format

Imports nothing (stdlib, numpy and torch only, checked by the architecture test): these run as
`python -m autoresearch.inside.<module>` with agent code in the same process, and trust nothing.
"""
