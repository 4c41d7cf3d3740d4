"""Several gateway URLs for one client (issue #10: a region's gateway may go offline): the client
uses one at a time and, when a session cannot be opened on it, tries the next (wrapping around),
resuming with `since` there. Mailbox cursors are the user's, not a gateway's, so a resume on
another region's gateway continues exactly where the last session stopped.

A drop alone does not move the client (a gateway has several replicas behind one URL, and a
redeploy closes sockets 1001 on one replica only); a failed attempt to open a session does.
"""

from __future__ import annotations

from collections.abc import Sequence

from .address import http_url, ws_url


class GatewayList:
    def __init__(self, urls: object):
        given = list(urls) if isinstance(urls, Sequence) and not isinstance(urls, str) else [urls]
        if not given:
            raise ValueError("at least one gateway URL is needed")
        self.http_urls = [http_url(url) for url in given]
        self.ws_urls = [ws_url(url) for url in given]
        self.index = 0
        self.failovers = 0  # times the client moved to the next gateway

    def __len__(self) -> int:
        return len(self.http_urls)

    @property
    def http_url(self) -> str:
        return self.http_urls[self.index]

    @property
    def ws_url(self) -> str:
        return self.ws_urls[self.index]

    def failed(self) -> None:
        """Opening a session on the current gateway failed: the next attempt goes to the next one."""
        if len(self) > 1:
            self.index = (self.index + 1) % len(self)
            self.failovers += 1
