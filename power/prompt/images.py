"""Where images go in a rendered prompt: Ollama's `[img-N]` tags.

Ollama numbers the images of a conversation in order (0, 1, …, across messages) and marks each
in its message's content before the template runs: a content that holds `[img]` gets its first
`[img]` replaced by `[img-N]`; otherwise `[img-N]` is put in front of the content (one tag per
image, no space). `/api/generate` puts each image in a user message of its own, `[img-N]`, before
the prompt's message. power renders the same text (so `_debug_render_only` shows what Ollama
shows), then splits it at the tags into text and image parts (`split_at_tags`) for the engine,
whose projector tokenises the text and puts each image, with whatever its model wraps an image
in, where its tag was. A tag whose number names no image is a 400, as in Ollama
(`invalid image index: N`); an image that no tag names is left out of the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from power.messages import Message

IMAGE_TAG = re.compile(r"\[img-(\d+)\]")


def tag_images(messages: Sequence[Message]) -> list[Message]:
    """`messages` with an `[img-N]` tag in each content for each of its images (see above)."""
    tagged: list[Message] = []
    n_images = 0
    for message in messages:
        if not message.images:
            tagged.append(message)
            continue
        prefix = ""
        content = message.content
        for _ in message.images:
            tag = f"[img-{n_images}]"
            n_images += 1
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        tagged.append(attrs.evolve(message, content=prefix + content))
    return tagged


def images_of(messages: Sequence[Message]) -> list[bytes]:
    """The images of `messages` in the order `tag_images` numbers them."""
    return [image for message in messages for image in message.images]


def image_messages(n_images: int) -> list[Message]:
    """/api/generate's messages for its images: one user message `[img-N]` each."""
    return [Message(role="user", content=f"[img-{i}]") for i in range(n_images)]


def has_tags(text: str) -> bool:
    return IMAGE_TAG.search(text) is not None


def split_at_tags(text: str, images: Sequence[bytes]) -> list[str | bytes]:
    """`text` cut at its `[img-N]` tags: the text between them and `images[N]` for each tag.
    Raises ValueError("invalid image index: N") for a tag without an image."""
    parts: list[str | bytes] = []
    position = 0
    for match in IMAGE_TAG.finditer(text):
        index = int(match.group(1))
        if index >= len(images):
            raise ValueError(f"invalid image index: {index}")
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(images[index])
        position = match.end()
    if position < len(text) or not parts:
        parts.append(text[position:])
    return parts
