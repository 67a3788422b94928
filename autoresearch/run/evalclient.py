"""The eval script's handle on the model under its first name: an eval script written as
`from autoresearch.run.evalclient import model` keeps working (autoresearch.inside.evalclient is it)."""
from ..inside.evalclient import Model, ModelError, model

__all__ = ["Model", "ModelError", "model"]
