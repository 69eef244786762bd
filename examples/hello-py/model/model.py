"""Echoes its input and says which environment it serves: the smallest truss model.

Standard library only. The host passes the constructor the keyword arguments it names: here `config`
(the parsed config.yaml) and `environment` ({"name": ...} or None).
"""

import os


class Model:
    def __init__(self, config, environment, **kwargs):
        self._example = config["model_metadata"].get("example_model_input")
        self._environment = environment["name"] if environment else None
        self._greeting = None

    def load(self):
        # Real models read weights here. This one reads config.yaml's environment_variables.
        self._greeting = os.environ.get("GREETING", "Hi")

    def predict(self, model_input):
        where = self._environment or "no environment"
        return {
            "message": f"{self._greeting} from {where}",
            "environment": self._environment,
            "model_id": os.environ.get("MERIDIAN_MODEL_ID"),
            "echo": model_input if model_input is not None else self._example,
        }
