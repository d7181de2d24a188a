"""Login redirects go to paths on this site only: every other shape, plain or percent-encoded, becomes '/'."""

from __future__ import annotations

import pytest

from berth.server.web.redirects import safe_next

REFUSED = [
    None, "", "x", "apps", "//evil.example", "///evil.example", "/\\evil.example", "\\/evil.example", "/\\/evil",
    "https://evil.example", "http:evil.example", "javascript:alert(1)", "data:text/html,x", "//evil.example/%2F..",
    "/%09/evil.example", "/\t/evil.example", "/\n/evil.example", "/%0a/evil.example", "/%0d%0a/evil", "/%2F/evil.example",
    "/%2f%2fevil.example", "/%5Cevil.example", "/%5c%5cevil", "%2F%2Fevil.example", "/%252F/evil.example",
    "/%25252F%25252Fevil", "/%2525252F%2525252Fevil", "https:%2F%2Fevil.example", "/ /evil", "/x y", "/é", "/\x00",
    "/%00", "/" + "a" * 3000,
]
ALLOWED = ["/", "/apps/ssh-session", "/apps/ssh-session?tag=a%20b&sort=name", "/sessions/abc123", "/apps/x#rows",
           "/a//b", "/apps/x?next=//evil.example"]


@pytest.mark.parametrize("target", REFUSED)
def test_refused_targets_become_the_home_page(target):
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ALLOWED)
def test_paths_on_this_site_are_kept_as_they_are(target):
    assert safe_next(target) == target
