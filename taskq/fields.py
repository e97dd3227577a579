"""marshmallow fields for what a client gives for outbound HTTP calls.

One home for the API's ``callback_url``/``callback_headers`` and the
``http_request`` task type's ``url``/``headers``, so both refuse the same
things at create (through ``taskq.urlguard``) and nothing accepted then fails
every attempt later.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from taskq.urlguard import header_error, literal_host_error


def check_outbound_url(url: str) -> None:
    """Refuse a malformed URL or a private/loopback literal (unless TASKQ_ALLOW_PRIVATE_URLS)."""
    error = literal_host_error(url)
    if error:
        raise ValidationError(error[0].upper() + error[1:] + ".")


class OutboundUrl(fields.Url):
    """An http(s) URL outbound calls may reach (checked again, with DNS, at connect time)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(schemes={"http", "https"}, require_tld=False, **kwargs)
        self.validators.append(check_outbound_url)


class HttpHeaders(fields.Dict):
    """Request headers: names are HTTP tokens, values printable text (no CR/LF)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            keys=fields.String(validate=validate.Length(min=1, max=256)),
            values=fields.String(validate=validate.Length(max=4096)),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, str]:
        headers = super()._deserialize(value, attr, data, **kwargs)
        problems = [header_error(name, text) for name, text in headers.items()]
        problems = [problem for problem in problems if problem]
        if problems:
            raise ValidationError(problems)
        return headers
