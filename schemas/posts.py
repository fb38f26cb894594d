"""PostV1: the input contract on the `posts` topic."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

SUPPORTED_POST_VERSIONS = (1,)

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class ImageRef(StrictModel):
    """Exactly one of url, b64 (base64 bytes) or path."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    b64: Annotated[str, StringConstraints(min_length=1, max_length=16_000_000)] | None = None
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        given = [name for name in ("url", "b64", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"image needs exactly one of url, b64, path (got {given or 'none'})")
        if self.b64 is not None:
            try:
                base64.b64decode(self.b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"image.b64 is not valid base64: {exc}") from exc
        return self

    @property
    def kind(self) -> Literal["url", "b64", "path"]:
        return "url" if self.url is not None else "b64" if self.b64 is not None else "path"

    def describe(self) -> str:
        """A short, loggable reference (never the bytes)."""
        if self.b64 is not None:
            return f"b64:{len(self.b64)}chars"
        if self.url is not None:
            return self.url.split("?", 1)[0].split("#", 1)[0]  # signed query strings stay out of logs and docs
        return f"file:{self.path}"


class PostV1(StrictModel):
    schema_version: Literal[1]
    post_id: Identifier
    author_id: Identifier
    channel: Identifier
    created_at: AwareDatetime
    image: ImageRef
    text: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    lang: Annotated[str, StringConstraints(min_length=2, max_length=16)] | None = None

    def content_fingerprint(self) -> str:
        """What a post_id stands for: its author, channel and image (the reference, or the inline bytes'
        hash). Re-processing the same post gives the same fingerprint; a reused post_id does not."""
        image = self.image
        if image.b64 is not None:
            ref = "b64:" + hashlib.sha256(image.b64.encode()).hexdigest()
        else:
            ref = f"url:{image.url}" if image.url is not None else f"path:{image.path}"
        return hashlib.sha256("\0".join((self.author_id, self.channel, ref)).encode()).hexdigest()[:32]


class PostError(ValueError):
    """A post that cannot be accepted; `stage` says where it failed (for DLQ headers)."""

    stage = "validate"


class MalformedPost(PostError):
    pass


class UnknownSchemaVersion(PostError):
    pass


class InvalidPost(PostError):
    pass


class KeyMismatch(PostError):
    """The Kafka key is not the post's post_id: keys route a post_id to one partition, so a post under
    another key could race a post of the same id on another partition."""


def parse_post(raw: bytes | str | None) -> PostV1:
    """Decode one Kafka value into a PostV1, raising a PostError subclass with a clear message."""
    if raw is None:
        raise MalformedPost("empty message value (tombstone)")
    try:
        data: Any = json.loads(raw)
    except RecursionError as exc:
        raise MalformedPost("not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise MalformedPost(f"not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise MalformedPost(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_POST_VERSIONS:
        raise UnknownSchemaVersion(
            f"schema_version {version!r} is not supported (supported: {list(SUPPORTED_POST_VERSIONS)})"
        )
    try:
        return PostV1.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidPost(f"invalid post: {problems}") from exc


def post_created_at(post: PostV1) -> datetime:
    return post.created_at
