"""Post images: fetch (URL, base64, local path) and decode under hard limits; bad input never stops the stream.

errors.py: the ImageError family; decode.py: bytes -> RGB array; url_policy.py: which URLs may be fetched
(SSRF guard); loader.py: the fetchers and ImageLoader.
"""

from workers.adapters.images.decode import (
    DEFAULT_FORMATS,
    DecodedImage,
    PixelBudget,
    configure_pillow,
    decode_image,
    parse_formats,
    sniff_format,
)
from workers.adapters.images.errors import (
    BlockedURL,
    CorruptImage,
    FetchFailed,
    FetchTimeout,
    ImageError,
    ImageTooLarge,
    LocalPathRefused,
    TooManyPixels,
    UnsupportedFormat,
)
from workers.adapters.images.loader import ImageLoader, describe_ref
from workers.adapters.images.url_policy import MAX_REDIRECTS, METADATA_ADDRESSES, METADATA_HOSTS, UrlPolicy

__all__ = [
    "DEFAULT_FORMATS",
    "MAX_REDIRECTS",
    "METADATA_ADDRESSES",
    "METADATA_HOSTS",
    "BlockedURL",
    "CorruptImage",
    "DecodedImage",
    "FetchFailed",
    "FetchTimeout",
    "ImageError",
    "ImageLoader",
    "ImageTooLarge",
    "LocalPathRefused",
    "PixelBudget",
    "TooManyPixels",
    "UnsupportedFormat",
    "UrlPolicy",
    "configure_pillow",
    "decode_image",
    "describe_ref",
    "parse_formats",
    "sniff_format",
]
