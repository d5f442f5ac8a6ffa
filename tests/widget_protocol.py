"""A client that speaks exactly the protocol of the book site's deployed chat widget.

Written for these tests from the widget's observed behaviour (it is not the widget's code):
- it keeps only `session_id` (in `sessionStorage`) and never sends a bookchat token;
- the body is `{message, session_id?, source_section: document.title, source_doc_path}`;
- a signed-in reader's Better-Auth session token (`localStorage.bearer_token`) goes along
  as `Authorization: Bearer …`; on a 401 the widget deletes it and says
  "Your session has expired. Please sign in again." (the reader is signed out of the site);
- the stream is read with `fetch` and split into events on `\\r\\n\\r\\n`, lines on `\\r\\n`;
- a 404 for a sent `session_id` drops it and sends the question once more without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

SIGNED_OUT = "Your session has expired. Please sign in again."


@dataclass
class WidgetEvent:
    name: str
    data: dict[str, Any]
    id: str | None


@dataclass
class WidgetAnswer:
    status: int
    events: list[WidgetEvent] = field(default_factory=list)
    retried_without_session: bool = False
    headers: httpx.Headers | None = None

    @property
    def text(self) -> str:
        return "".join(e.data["content"] for e in self.events if e.name == "token")

    def first(self, name: str) -> dict[str, Any]:
        return next(e.data for e in self.events if e.name == name)


def parse_crlf_sse(body: str) -> list[WidgetEvent]:
    """The widget's parser: events end with CRLF CRLF, fields are CRLF-terminated lines."""
    bare_lf = body.replace("\r\n", "")
    assert "\n" not in bare_lf and "\r" not in bare_lf, "SSE framing must be CRLF only"
    assert body.endswith("\r\n\r\n"), "the stream must end on an event boundary"
    events = []
    for frame in body.split("\r\n\r\n")[:-1]:
        name, data, event_id = "message", [], None
        for line in frame.split("\r\n"):
            if line.startswith(":"):
                continue  # comment (ping)
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value
        if data:
            events.append(WidgetEvent(name, json.loads("\n".join(data)), event_id))
    return events


@dataclass
class DeployedWidget:
    """One browser tab of the book site with the widget on it."""

    http: httpx.AsyncClient
    document_title: str = "LiDAR | Physical AI & Humanoid Robotics"
    pathname: str = "/docs/sensors/lidar"
    bearer_token: str | None = None  # localStorage.bearer_token (the site's sign-in)
    session_id: str | None = None  # sessionStorage
    shown_errors: list[str] = field(default_factory=list)

    async def ask(self, question: str) -> WidgetAnswer:
        answer = await self._post(question)
        if answer.status == 404 and self.session_id is not None:
            self.session_id = None  # silently start over, as the widget does
            answer = await self._post(question)
            answer.retried_without_session = True
        return answer

    async def _post(self, question: str) -> WidgetAnswer:
        body: dict[str, Any] = {
            "message": question,
            "source_section": self.document_title,
            "source_doc_path": self.pathname,
        }
        if self.session_id is not None:
            body["session_id"] = self.session_id
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.bearer_token:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        response = await self.http.post("/api/v1/chat", content=json.dumps(body), headers=headers)
        answer = WidgetAnswer(status=response.status_code, headers=response.headers)
        if response.status_code == 401:
            self.bearer_token = None  # localStorage.removeItem('bearer_token')
            self.shown_errors.append(SIGNED_OUT)
            return answer
        if response.status_code != 200:
            return answer
        assert response.headers["content-type"].startswith("text/event-stream")
        answer.events = parse_crlf_sse(response.text)
        for event in answer.events:
            if event.name == "session":
                self.session_id = event.data["session_id"]
        return answer
