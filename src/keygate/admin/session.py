"""Admin sign-in: who a request is (Bearer or session cookie + CSRF header), and the page's
login/logout routes. Wrong passwords are charged to the failed-attempt throttle."""

from __future__ import annotations

from typing import Any

from keygate.admin.auth import CSRF_HEADER, SCOPE_COOKIE, AdminAuth
from keygate.admin.auth import session_cookie as make_cookie
from keygate.admin.components import OK
from keygate.admin.http import ApiError, Reply, Request, is_https, refused
from keygate.admin.http import unauthorized as _unauthorized
from keygate.admin.schema import Text, fields_schema
from keygate.admin.table import op
from keygate.http.asgi import SESSION_COOKIE, read_cookie

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TAG = "session"
LOGIN = {"password": Text(min_len=1, problem="required")}


class SessionRoutes:
    def __init__(self, auth: AdminAuth) -> None:
        self.auth = auth

    async def authorize(self, scope: dict[str, Any]) -> None:
        """Bearer (a wrong one is charged to the failed-attempt throttle, like the login form) or
        the session cookie; a valid cookie without the CSRF header on a write is 403, not 401."""
        bearer = False
        cookie: str | None = None
        csrf = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                bearer = value.partition(b" ")[0].lower() == b"bearer"
            elif name == b"cookie":
                cookie = read_cookie(value.decode("latin-1"), SESSION_COOKIE) or cookie
            elif name == CSRF_HEADER:
                csrf = True
        if bearer:
            if await self.auth.check(scope):
                return
            raise refused(self.auth.failed(scope, "admin API"), "invalid admin credentials")
        if await self.auth.check(scope):
            return
        if (
            cookie
            and scope["method"] not in _SAFE_METHODS
            and not csrf
            and await self.auth.session_ok(cookie)
        ):
            raise ApiError(
                403, "the x-keygate-csrf header is required with cookie auth", "csrf_required"
            )
        raise _unauthorized("admin authentication required")

    @op(
        "POST",
        "/api/session",
        "Log in with the admin password; sets the HttpOnly SameSite=Strict session cookie",
        tag=_TAG,
        answer=OK,
        answer_text="logged in; Set-Cookie: keygate_session",
        body=fields_schema(LOGIN, required=["password"]),
        public=True,
    )
    async def login(self, req: Request) -> Reply:
        doc = await req.json()
        password = LOGIN["password"].check("password", doc.get("password"))
        if not await self.auth.password_ok(password):
            raise refused(self.auth.failed(req.scope, "admin login"), "wrong admin password")
        token = await self.auth.new_session()
        cookie = make_cookie(token, self.auth.max_age(token), is_https(req.scope))
        return Reply(200, {"ok": True}, [(b"set-cookie", cookie)])

    @op(
        "GET",
        "/api/session",
        "Whether the caller is authenticated",
        tag=_TAG,
        answer=OK,
        answer_text="yes",
    )
    async def session_info(self, req: Request) -> Reply:
        return Reply(200, {"ok": True})

    @op(
        "DELETE",
        "/api/session",
        "Log out: revoke and clear the session cookie",
        tag=_TAG,
        answer=OK,
        answer_text="logged out",
    )
    async def logout(self, req: Request) -> Reply:
        req.scope.pop(SCOPE_COOKIE, None)
        for name, value in req.scope["headers"]:
            if name == b"cookie":
                token = read_cookie(value.decode("latin-1"), SESSION_COOKIE)
                if token:
                    await self.auth.revoke(token)
        cookie = f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        if is_https(req.scope):
            cookie += "; Secure"
        return Reply(200, {"ok": True}, [(b"set-cookie", cookie.encode())])
