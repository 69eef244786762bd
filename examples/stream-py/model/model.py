"""Streams its answer: predict() is a generator, so each yielded chunk reaches the client as it is made.

Input: {"prompt": "words to stream", "count": 5, "delay_ms": 50} (all optional). A request with
`Accept: application/json` gets the chunks gathered into one JSON string instead, as truss does.
"""

import time


class Model:
    def __init__(self, environment=None):
        self._environment = environment["name"] if environment else None

    def predict(self, model_input):
        model_input = model_input if isinstance(model_input, dict) else {}
        words = str(model_input.get("prompt") or "streaming from Meridian").split()
        count = model_input.get("count")
        count = count if isinstance(count, int) and count >= 0 else len(words)
        delay_ms = model_input.get("delay_ms")
        delay = (delay_ms if isinstance(delay_ms, int) and delay_ms >= 0 else 50) / 1000
        for i in range(count):
            if i > 0:
                time.sleep(delay)
            yield f"{words[i % len(words)]}\n"
        yield f"[done in {self._environment or 'no environment'}]\n"
