from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.recipes.dockerfile import from_images


def test_plain_from_lines_in_order() -> None:
    assert from_images("FROM alpine:3.19\nRUN true\nFROM busybox\n", {}) == [
        "alpine:3.19",
        "busybox",
    ]


def test_keywords_flags_and_stage_names() -> None:
    text = """
from --platform=linux/amd64 golang:1.22 AS Build
RUN go build
FROM build AS second
From SECOND
FROM scratch
COPY --from=build /app /app
"""
    assert from_images(text, {}) == ["golang:1.22"]


def test_continuations_comments_and_blank_lines() -> None:
    text = "# a comment\n\nFROM \\\n  # inside\n\n  registry.example.com/base:\\\n1 AS b\n"
    assert from_images(text, {}) == ["registry.example.com/base:1"]


def test_escape_directive() -> None:
    text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM `\n  windows:ltsc\nRUN dir C:\\\n"
    assert from_images(text, {}) == ["windows:ltsc"]


def test_escape_directive_must_come_first() -> None:
    text = "FROM a\n# escape=`\nFROM b `\nFROM c\n"
    assert from_images(text, {}) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ["base:1.0", "registry.example.com/tool", "img:dflt", "plain"]),
        ({"V": "2", "REG": "r.io", "T": "x"}, ["base:2", "r.io/tool", "img:x", "plain-set"]),
    ],
)
def test_args_before_the_first_from(args: dict[str, str], expected: list[str]) -> None:
    text = """
ARG V=1.0
ARG REG="registry.example.com" T
ARG SUFFIX=${T:+-set}
FROM base:$V
FROM ${REG}/tool
FROM img:${T:-dflt}
FROM plain${SUFFIX}
"""
    assert from_images(text, args) == expected


def test_only_declared_global_args_reach_from() -> None:
    text = "ARG A=a\nFROM x:$A\nARG B=b\nFROM y:${B:-none}$UNDECLARED\n"
    assert from_images(text, {"B": "given", "UNDECLARED": "z"}) == ["x:a", "y:none"]


def test_variables_can_name_stages_and_vanish() -> None:
    text = "ARG STAGE=one\nARG EMPTY\nFROM a AS one\nFROM $STAGE\nFROM $EMPTY\nFROM\n"
    assert from_images(text, {}) == ["a"]


def test_unbalanced_quotes_in_arg_are_ignored() -> None:
    assert from_images('ARG A="oops\nFROM x:${A:-1}\n', {}) == ["x:1"]


def test_trailing_continuation_at_end_of_file() -> None:
    assert from_images("FROM a \\", {}) == ["a"]
    assert from_images("FROM a\n\\", {}) == ["a"]


def test_copy_from_and_mount_from_images_but_not_stages() -> None:
    text = """
ARG TOOL=tools:1
FROM base:1 AS build
COPY --from=build /a /b
COPY --from=0 /a /b
COPY --chown=1 --from=$TOOL /bin/t /bin/t
RUN --mount=type=bind,from=cache:2,target=/c --mount=type=cache,target=/x true
RUN --mount=type=bind,from=BUILD,target=/d true
COPY --from=base:1 /a /b
"""
    assert from_images(text, {}) == ["base:1", "tools:1", "cache:2"]


def test_heredocs_are_not_instructions() -> None:
    text = "FROM a\nRUN <<EOT\nFROM not-an-image\nCOPY --from=nor-this / /\nEOT\nFROM b\n"
    assert from_images(text, {}) == ["a", "b"]


def test_stages_after_the_target_are_not_built() -> None:
    text = "FROM a AS one\nCOPY --from=c / /\nFROM b AS Two\nFROM d\n"
    assert from_images(text, {}, target="one") == ["a", "c"]
    assert from_images(text, {}, target="two") == ["a", "c", "b"]
    assert from_images(text, {}, target="missing") == ["a", "c", "b", "d"]


def test_a_file_the_parser_refuses_names_nothing() -> None:
    assert from_images("", {}) == []
    assert from_images("# only a comment\n", {}) == []


def test_a_lone_surrogate_does_not_crash_the_parser() -> None:
    # In a child interpreter: before the fix this killed the process (SIGSEGV).
    code = (
        "from proxy.recipes.dockerfile import from_images\n"
        "print(from_images('FROM \\udcff\\nCOPY --from=b\\udc80x /a /b\\n', {}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "['?', 'b?x']\n"


def test_with_open_args_an_image_that_needs_an_arg_without_default_is_left_out() -> None:
    text = "ARG A\nARG B=b\nARG C\nARG C=c\nFROM x:${A}\nFROM y:$B\nFROM z:${C}\nFROM w:${A:-1}\n"
    assert from_images(text, {}, open_args=True) == ["y:b", "z:c"]
    assert from_images(text, {}) == ["x:", "y:b", "z:c", "w:1"]
    assert from_images(text, {"A": "2"}, open_args=True) == ["x:2", "y:b", "z:c", "w:2"]
