"""routes: version prefixes, bounded templates, the reference a pull names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.routes import (
    ROUTES,
    TEMPLATES,
    api_path,
    is_form,
    locate,
    pulled_reference,
    route,
    template,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1.41/containers/create", "/containers/create"),
        ("/v1/info", "/info"),
        ("/_ping", "/_ping"),
        ("/version", "/version"),  # not a version prefix: no slash follows "v..."
        ("/v1.41", "/v1.41"),
        # dockerd's router takes /v{version:[0-9.]+}: each of these routed there.
        ("/v1.41.0/containers/create", "/containers/create"),
        ("/v1.41.0.0/images/create", "/images/create"),
        ("/v1.41./containers/create", "/containers/create"),
        ("/v./containers/create", "/containers/create"),
        ("/v01.41/containers/create", "/containers/create"),
        ("/V1.41/containers/create", "/V1.41/containers/create"),  # case matters
        ("/vx/v1.41/containers/create", "/vx/v1.41/containers/create"),
        ("/v1.41/v1.41/containers/create", "/v1.41/containers/create"),  # one prefix only
        # It matches the percent-decoded path, slashes included.
        ("/v1.41/containers/%63reate", "/containers/create"),
        ("/v1.41%2Fcontainers%2Fcreate", "/containers/create"),
        ("/%761.41/images/create", "/images/create"),
        # An absolute-form target routes by its path.
        ("http://d/v1.41/containers/create", "/containers/create"),
        ("HTTP://d:80/containers/create", "/containers/create"),
        ("http:/v1.41/containers/create", "/containers/create"),
        ("/v1.41/containers/create/", "/containers/create/"),  # a 404, not a redirect
        # Routed nowhere: a 400 (bad escape, relative target) or a redirect (unclean).
        ("/v1.41/containers/%zzcreate", None),
        ("/v1.41/containers/create%", None),
        ("v1.41/containers/create", None),
        ("d:80", None),
        ("http://d", None),
        ("//v1.41/containers/create", None),
        ("/v1.41//containers/create", None),
        ("/v1.41/./containers/create", None),
        ("/v1.41/x/../containers/create", None),
        ("/v1.41/containers/%2e%2e/containers/create", None),
        ("/v1.41/containers/create/.", None),
        ("/v1.41/containers/create//", None),
    ],
)
def test_api_path_routes_as_dockerd_does(path: str, expected: str | None) -> None:
    assert api_path(path) == expected


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1.41/_ping", "/_ping"),
        ("/v1.41/containers/abc123/json", "/containers/{id}/json"),
        ("/containers/abc123", "/containers/{id}"),
        ("/v1.41/containers/abc/attach", "/containers/{id}/attach"),
        ("/v1.41/exec/e1/start", "/exec/{id}/start"),
        ("/v1.41/images/127.0.0.1:1/team/app:1/json", "/images/{name}/json"),
        ("/v1.41/images/app:1", "/images/{name}"),
        ("/v1.41/images/create", "/images/create"),
        ("/v1.41/containers/a/b/json", "other"),
        ("/nonsense", "other"),
        ("/v1.41.0/containers/create", "/containers/create"),
        ("/v1.41.0/images/create", "/images/create"),
        ("/v1.41/containers/%61bc/json", "/containers/{id}/json"),
        ("/v1.41//containers/create", "other"),
        ("/_heal/status", "/_heal/status"),
        # A template ending in text before one ending in a variable that takes slashes.
        ("/v1.41/plugins/vieux/sshfs:1/enable", "/plugins/{name}/enable"),
        ("/v1.41/plugins/vieux/sshfs:1", "/plugins/{name}"),
        ("/v1.41/images/a/b:1/history", "/images/{name}/history"),
        ("/v1.41/containers/abc/json\n", "other"),  # Go's $ is the end of the text
    ],
)
def test_route_templates(path: str, template: str) -> None:
    assert route(path) == template


@given(st.text(alphabet="abc/._-:v0123456789{}", max_size=60))
def test_route_is_always_a_known_template(path: str) -> None:
    """Whatever the path, the label is one of a fixed set: metrics stay bounded."""
    assert route("/" + path) in {*TEMPLATES, "other"}


@pytest.mark.parametrize(
    ("query", "reference"),
    [
        ("fromImage=foo&tag=latest", "foo:latest"),
        ("fromImage=127.0.0.1%3A1%2Fteam%2Fapp&tag=2", "127.0.0.1:1/team/app:2"),
        ("fromImage=foo%3A3", "foo:3"),
        ("fromImage=foo&tag=sha256%3Aabc", "foo@sha256:abc"),
        ("fromImage=foo&tag=", None),  # all tags
        ("fromImage=foo", None),
        ("fromSrc=-&repo=foo", None),  # an import, not a pull
        ("fromImage=foo&tag=1&fromSrc=-", "foo:1"),  # dockerd pulls when fromImage is set
        ("fromImage=foo&tag=1;x=2", None),  # dockerd: "invalid semicolon separator"
        ("fromImage=foo&tag=1&x=%zz", None),  # Go refuses the escape
        ("fromImage=&tag=1", None),
        ("", None),
    ],
)
def test_pulled_reference(query: str, reference: str | None) -> None:
    assert pulled_reference(query) == reference


@pytest.mark.parametrize(
    ("query", "form", "reference"),
    [
        ("", "fromImage=foo&tag=1", "foo:1"),
        ("tag=2", "fromImage=foo", "foo:2"),
        ("fromImage=bar&tag=2", "fromImage=foo&tag=1", "foo:1"),  # the body's come first
        ("fromImage=foo&tag=2", "tag=", None),  # an empty first tag: all tags
    ],
)
def test_pulled_reference_reads_a_form_body_first(
    query: str, form: str, reference: str | None
) -> None:
    """Go's ``Request.Form`` holds a form body's values ahead of the query's."""
    assert pulled_reference(query, form) == reference


@pytest.mark.parametrize(
    ("content_types", "form"),
    [
        ([b"application/x-www-form-urlencoded"], True),
        ([b"Application/X-WWW-Form-Urlencoded ; charset=utf-8"], True),
        ([b"application/json", b"application/x-www-form-urlencoded"], False),
        ([b"multipart/form-data; boundary=x"], False),  # ParseForm leaves multipart alone
        ([], False),
    ],
)
def test_is_form_reads_the_first_content_type_as_go_does(
    content_types: list[bytes], form: bool
) -> None:
    assert is_form(content_types) == form


@given(
    endpoint=st.sampled_from(TEMPLATES).map(
        lambda t: t.replace("{id}", "abc").replace("{name}", "a/b:1")
    ),
    version=st.sampled_from(["", "/v1.41", "/v1.41.0", "/v1", "/v."]),
    escape=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_percent_escapes_route_as_the_bytes_they_stand_for(
    endpoint: str, version: str, escape: list[bool]
) -> None:
    """dockerd routes the decoded path: any byte but the first may come escaped.

    The first slash may not: a target that does not start with one is refused.
    """
    path = version + endpoint
    escape[0] = False
    encoded = "".join(f"%{ord(c):02X}" if e else c for c, e in zip(path, escape, strict=False))
    encoded += path[len(escape) :]
    assert api_path(encoded) == api_path(path) == endpoint
    assert route(encoded) == route(path)


@pytest.mark.parametrize(
    ("method", "target", "route", "version"),
    [
        ("GET", "/v1.41/containers/abc/json", "GET /containers/{id}/json", "1.41"),
        ("GET", "/containers/abc/json?size=1", "GET /containers/{id}/json", None),
        ("HEAD", "/_ping", "HEAD /_ping", None),
        ("POST", "/v1.23/containers/x/start", "POST /containers/{id}/start", "1.23"),
        ("GET", "/v1.41.0/containers/json", "GET /containers/json", "1.41.0"),
        ("GET", "/v1.41/containers%2Fjson", "GET /containers/json", "1.41"),
        # The method picks among routes of one path, in dockerd's order.
        ("DELETE", "/v1.41/plugins/vieux/sshfs:1", "DELETE /plugins/{name}", "1.41"),
        ("POST", "/v1.41/plugins/vieux/sshfs:1/enable", "POST /plugins/{name}/enable", "1.41"),
        ("GET", "/images/a/get/json", "GET /images/{name}/json", None),
        ("GET", "/images/a/json/get", "GET /images/{name}/get", None),
        (
            "DELETE",
            "/containers/a/checkpoints/b",
            "DELETE /containers/{id}/checkpoints/{checkpoint}",
            None,
        ),
        ("GET", "/networks/", "GET /networks/", None),
        ("OPTIONS", "/anything/at/all", "OPTIONS /{anyroute}", None),
        # A method no route of that path takes: dockerd's 404.
        ("HEAD", "/v1.41/containers/json", "HEAD other", "1.41"),
        ("POST", "/v1.41/containers/abc/json", "POST other", "1.41"),
        ("get", "/_ping", "* other", None),
        ("BREW", "/_ping", "* other", None),
        # The debug router: any method, never under a version prefix.
        ("POST", "/debug/vars", "POST /debug/vars", None),
        ("BREW", "/debug/pprof/heap", "* /debug/pprof/{name}", None),
        ("GET", "/v1.41/debug/vars", "GET other", "1.41"),
        # The proxy's own answers: their exact raw path only.
        ("GET", "/_heal/status", "GET /_heal/status", None),
        ("POST", "/_heal/heal?image=a", "POST /_heal/heal", None),
        ("GET", "/v1.41/_heal/status", "GET other", "1.41"),
        ("POST", "/_heal/status", "POST other", None),
        # dockerd routes these (a name "a/b", an empty one, a newline in one);
        # the proxy will not vouch for them.
        ("GET", "/containers/a%2Fb/json", "GET other", None),
        ("GET", "/containers/a/export/json", "GET other", None),
        ("GET", "/volumes/", "GET other", None),
        ("GET", "/containers/a%0Ab/json", "GET other", None),
        ("GET", "/containers/json%00", "GET other", None),
        ("GET", "/containers/json%0A", "GET other", None),
        # Not routed at all: redirects, 404s, 400s.
        ("GET", "//containers/json", "GET other", None),
        ("GET", "/v1.41/../containers/json", "GET other", None),
        ("GET", "/v1.41/%2e%2e/containers/json", "GET other", None),
        ("GET", "/V1.41/containers/json", "GET other", None),
        ("GET", "/v1.41/Containers/json", "GET other", "1.41"),
        ("GET", "/v1.41/containers/json/", "GET other", "1.41"),
        ("GET", "/v1.41/v1.41/containers/json", "GET other", "1.41"),
        ("GET", "/v1.41/containers/json;x", "GET other", "1.41"),
        ("GET", "/v1.41/containers/json%3Fall=1", "GET other", "1.41"),
        ("GET", "/v1.41/containers/%zz/json", "GET other", None),
    ],
)
def test_locate_routes_as_dockerd_does(
    method: str, target: str, route: str, version: str | None
) -> None:
    assert locate(method, target) == (route, version)


def test_every_route_template_labels_metrics() -> None:
    """route() knows every template of the table but the OPTIONS catch-all."""
    assert {template(row) for row in ROUTES} - set(TEMPLATES) == {"/{anyroute}"}
