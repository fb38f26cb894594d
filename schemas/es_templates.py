"""Elasticsearch index templates derived from the pydantic contracts (explicit, dynamic: strict)."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, NaiveDatetime

from schemas.results import AlertV1, AnalysisResultV2
from schemas.reviews import ChannelThresholdsV1, ReviewV1

# Free text that people search in; everything else string-typed is an exact-match keyword.
TEXT_FIELDS = {"text", "message", "note"}
# A field may carry its own mapping: Field(json_schema_extra={ES_MAPPING: {"type": "binary"}}) (e.g. not indexed).
ES_MAPPING = "es_mapping"


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated wrappers down to the underlying type."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"cannot map union {annotation} to one Elasticsearch type")
            annotation = args[0]
        else:
            return annotation


def field_mapping(name: str, annotation: Any) -> dict[str, Any]:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin is list:
        (item,) = get_args(annotation)
        item = _unwrap(item)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return {"type": "nested", "dynamic": "strict", "properties": model_properties(item)}
        return field_mapping(name, item)  # arrays of scalars map like the scalar
    if origin is Literal:
        values = get_args(annotation)
        return field_mapping(name, type(values[0]))
    if annotation in (AwareDatetime, NaiveDatetime):
        return {"type": "date"}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return {"type": "object", "dynamic": "strict", "properties": model_properties(annotation)}
        if issubclass(annotation, bool):
            return {"type": "boolean"}
        if issubclass(annotation, int):
            return {"type": "long"}
        if issubclass(annotation, float):
            return {"type": "float"}
        if issubclass(annotation, datetime):
            return {"type": "date"}
        if issubclass(annotation, str):
            if name in TEXT_FIELDS:
                return {"type": "text"}
            return {"type": "keyword", "ignore_above": 1024}
    raise TypeError(f"no Elasticsearch mapping for field {name!r} of type {annotation!r}")


def model_properties(model: type[BaseModel]) -> dict[str, Any]:
    props = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        props[name] = dict(extra[ES_MAPPING]) if ES_MAPPING in extra else field_mapping(name, info.annotation)
    return props


def index_template(model: type[BaseModel], index_pattern: str, *, shards: int = 1, replicas: int = 0) -> dict[str, Any]:
    """Body for `indices.put_index_template` (composable template)."""
    return {
        "index_patterns": [index_pattern],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": shards, "number_of_replicas": replicas},
            "mappings": {"dynamic": "strict", "properties": model_properties(model)},
        },
        "_meta": {"generated_from": f"{model.__module__}.{model.__qualname__}", "managed_by": "moodwatch"},
    }


def results_template(index_prefix: str = "moodwatch-results", **kw: Any) -> dict[str, Any]:
    """From AnalysisResultV2, whose fields are a superset of V1's: v1 records already stored stay valid."""
    return index_template(AnalysisResultV2, f"{index_prefix}*", **kw)


def alerts_template(index_prefix: str = "moodwatch-alerts", **kw: Any) -> dict[str, Any]:
    return index_template(AlertV1, f"{index_prefix}*", **kw)


def reviews_template(index_prefix: str = "moodwatch-reviews", **kw: Any) -> dict[str, Any]:
    return index_template(ReviewV1, f"{index_prefix}*", **kw)


def thresholds_template(index_prefix: str = "moodwatch-thresholds", **kw: Any) -> dict[str, Any]:
    return index_template(ChannelThresholdsV1, f"{index_prefix}*", **kw)
