"""An OpenAI-compatible chat model with fake tokens (standard library only). The host maps OpenAI's routes
to methods: chat_completions(body) serves POST /v1/chat/completions, completions(body) /v1/completions,
embeddings(body) /v1/embeddings; an async generator of dicts streams them as Server-Sent Events
(`data: {...}`, then `data: [DONE]`). websocket(ws) serves the websocket route: an echo that also says where
it runs."""

import asyncio
import base64
import hashlib
import os
import random
import string
import struct
import time


def _id(prefix):
    return prefix + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(12))


class Model:
    def __init__(self, **kwargs):
        environment = kwargs.get("environment") or {}
        self._environment = environment.get("name") or "no environment"

    def load(self):
        pass

    def predict(self, model_input):
        """The truss predict route still works: {"prompt": "..."} → the reply as JSON."""
        return {"reply": "".join(self._reply(str((model_input or {}).get("prompt", ""))))}

    def chat_completions(self, body):
        messages = body.get("messages") if isinstance(body, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else {}
        prompt = last.get("content") if isinstance(last, dict) and isinstance(last.get("content"), str) else ""
        tokens = self._reply(prompt)
        max_tokens = body.get("max_tokens")
        out = tokens[:max_tokens] if isinstance(max_tokens, int) and max_tokens >= 0 else tokens
        # OpenAI's metadata values are strings: "150" as well as 150.
        try:
            delay_ms = int((body.get("metadata") or {}).get("delay_ms", 20))
        except (TypeError, ValueError):
            delay_ms = 20
        delay = max(delay_ms, 0) / 1000
        ident, created, model = _id("chatcmpl-"), int(time.time()), body.get("model") or "openai-py"
        finish = "length" if len(out) < len(tokens) else "stop"
        prompt_tokens = len(prompt.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(out),
            "total_tokens": prompt_tokens + len(out),
        }
        if not body.get("stream"):
            return {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(out)}, "finish_reason": finish}
                ],
                "usage": usage,
            }

        def chunk(delta, finish_reason=None):
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            for token in out:
                await asyncio.sleep(delay)
                yield chunk({"content": token})
            yield chunk({}, finish)

        return stream()

    def completions(self, body):
        prompt = body.get("prompt") if isinstance(body, dict) and isinstance(body.get("prompt"), str) else ""
        return {
            "id": _id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or "openai-py",
            "choices": [{"index": 0, "text": "".join(self._reply(prompt)), "finish_reason": "stop"}],
        }

    def embeddings(self, body):
        """A fake 8-dimensional embedding per input, derived from its SHA-256 (the same text, the same vector).
        `encoding_format: "base64"` (what the openai package asks for by default) gets little-endian float32s
        in base64, as OpenAI sends them."""
        inputs = body.get("input") if isinstance(body, dict) else None
        as_base64 = body.get("encoding_format") == "base64"
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs or []]
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            vector = [b / 255 for b in digest[:8]]
            embedding = vector
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {"object": "list", "data": data, "model": body.get("model") or "openai-py"}

    async def websocket(self, ws):
        """Echoes each message back (text prefixed with the environment's name, binary as it came)."""
        while True:
            message = await ws.receive()  # raises WebSocketDisconnect when the client closes
            if message["type"] == "text":
                await ws.send_text(f"{self._environment}: {message['data']}")
            else:
                await ws.send_bytes(message["data"])

    def _reply(self, prompt):
        """Fake tokens: the prompt's words echoed back, then where this replica runs."""
        return ["You", " said"] + [f" {w}" for w in prompt.split()] + [f" (from {self._environment})"]
