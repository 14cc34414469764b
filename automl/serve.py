"""``automl serve RUN_DIR``: an HTTP prediction service over a finished run's final model.

- ``POST /predict``: an image as the multipart field ``file`` (image tasks), or JSON
  ``{"texts": [...]}`` (text tasks), answered with the label, its probability and the top k.
- ``GET /health``, ``GET /labels``; OpenAPI docs at ``/docs``.

Bad input never gets a 500: a body over the size limit, or an image whose header claims more pixels
than the cap (a decompression bomb), gets 413; a file that is not an image or a body of the wrong
kind gets 400 with the reason.
"""

from pathlib import Path

from automl.config import DEFAULT_MAX_PIXELS
from automl.errors import ConfigError, DataError
from automl.predict import ImageTooLarge, Predictor, our_pixel_cap_only

DEFAULT_MAX_BYTES = 10 * 1024 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send) -> None:
        import json

        body = json.dumps({"detail": f"The request body is larger than the limit of {self.max_bytes} bytes."})
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})


def create_app(
    run_dir: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    top_k: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    trust_checkpoint: bool = False,
):
    # long: the service's routes, closures over one loaded predictor, read best as one table
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile  # what a parsed form holds (FastAPI's is a subclass)
    except ImportError as exc:
        raise ConfigError("automl serve needs the serve extras: pip install 'automl[serve]'.") from exc

    predictor = Predictor.load(run_dir, trust_checkpoint=trust_checkpoint, max_pixels=max_pixels)
    app = FastAPI(
        title="automl prediction service",
        description=f"The final model of `{Path(run_dir).name}` ({predictor.kind} classification, "
        f"{predictor.tier} tier).",
    )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "kind": predictor.kind, "tier": predictor.tier, "classes": len(predictor.labels)}

    @app.get("/labels")
    def labels() -> dict:
        return {"labels": predictor.labels}

    body_doc = {
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                    }
                },
            },
            "required": True,
        }
    }

    def predict_images(data: list[bytes], names: list[str]) -> list[dict]:
        for name, image in zip(names, data, strict=True):  # headers only: a bomb refuses the request
            try:
                predictor.check_pixels(image)
            except ImageTooLarge as error:
                raise HTTPException(413, f"{name}: {error}") from error
        return predictor.predict_images(data, names, top_k)

    @app.post("/predict", openapi_extra=body_doc)
    async def predict(request: Request) -> dict:
        kind = request.headers.get("content-type", "")
        if predictor.kind == "image":
            if not kind.startswith("multipart/form-data"):
                raise HTTPException(400, "Send the image as multipart/form-data in the field 'file'.")
            form = await request.form()
            uploads = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
            if not uploads:
                raise HTTPException(400, "The multipart body has no file in the field 'file'.")
            data = [await upload.read() for upload in uploads]
            names = [upload.filename or f"file {i}" for i, upload in enumerate(uploads)]
            rows = await run_in_threadpool(predict_images, data, names)
        else:
            try:
                payload = await request.json()
            except ValueError as exc:
                raise HTTPException(400, 'Send JSON: {"texts": ["first text", ...]}.') from exc
            texts = payload.get("texts") if isinstance(payload, dict) else None
            if not isinstance(texts, list) or not texts:
                raise HTTPException(400, 'The JSON body needs a non-empty list "texts".')
            rows = await run_in_threadpool(predictor.predict_texts, texts, None, top_k)
        errors = [row for row in rows if row["error"]]
        if errors and len(errors) == len(rows):
            raise HTTPException(400, f"{errors[0]['id']}: {errors[0]['error']}")
        for row in rows:
            row["top_k"] = [{"label": label, "probability": p} for label, p in row["top_k"]]
        return {"predictions": rows}

    @app.exception_handler(DataError)
    async def bad_input(request, error: DataError):
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": str(error)}, status_code=400)

    return BodyLimit(app, max_bytes), app


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    trust_checkpoint: bool = False,
) -> None:
    import uvicorn

    our_pixel_cap_only()
    limited, _ = create_app(run_dir, max_bytes, max_pixels=max_pixels, trust_checkpoint=trust_checkpoint)
    uvicorn.run(limited, host=host, port=port, log_level="info")
