"""`scorefetch doctor`'s check of Encoura: a login and the harmless listings."""

from __future__ import annotations

from scorefetch.core.errors import ConfigError, Failure, VendorError
from scorefetch.core.http import build_session
from scorefetch.core.logs import untrusted
from scorefetch.doctor.checks import Check, Clock
from scorefetch.encoura.client import Encoura, token_lifetime
from scorefetch.encoura.poller import KNOWN_PRODUCT_KEYS
from scorefetch.encoura.settings import EncouraConfig


def check(cfg: EncouraConfig, clock: Clock) -> Check:
    """A login and a listing of exports already Delivered (listing NotDelivered ones
    would mark them delivered)."""
    client = Encoura(cfg, clock.watch(build_session(), "Encoura"))  # as the daemon's
    try:
        organization = client.login()
    except ConfigError as exc:
        return Check("encoura", False, str(exc), "set encoura.organization to one of those")
    except VendorError as exc:
        advice = (
            "check encoura.api_key, encoura.username and encoura.password"
            if exc.kind is Failure.AUTH
            else "check encoura.base_url and that this host may reach it (HTTPS out)"
        )
        return Check("encoura", False, f"{cfg.base_url}: login failed: {exc}", advice)
    counts = []
    for key in cfg.product_keys:
        try:
            # Delivered ones only: listing NotDelivered would mark them delivered.
            counts.append(f"{key}: {len(client.list_exports(key, 'Delivered'))} delivered")
        except VendorError as exc:
            return Check(
                "encoura", False, f"product key {key!r}: {exc}", "check encoura.product_keys"
            )
    unknown = [key for key in cfg.product_keys if key not in KNOWN_PRODUCT_KEYS]
    note = f"; not among the keys known in 2022: {', '.join(unknown)}" if unknown else ""
    return Check(
        "encoura",
        True,
        f"{cfg.base_url}: logged in with {client.login_field}, organization "
        f"{untrusted(organization, 100)}; {'; '.join(counts)}; {_observed(client)}{note}",
    )


def _observed(client: Encoura) -> str:
    """What the vendor showed of the readings its document leaves open (the last listing's
    paging, the session token's lifetime)."""
    paging = client.paging
    if paging.skip_ignored:
        pages = f"Limit/Skip ignored ({paging.largest_page} exports in every answer)"
    elif paging.largest_page >= client.page_limit:
        pages = f"Limit {client.page_limit} honoured"
    elif paging.requests > 2 and paging.largest_page:
        pages = f"pages of at most {paging.largest_page} (fewer than Limit {client.page_limit})"
    else:
        pages = f"one page ({paging.largest_page} exports)"
    lifetime = token_lifetime(client.token or "")
    token = f"session token lives {lifetime / 60:g} min" if lifetime else "token lifetime unknown"
    return f"listing: {pages}; {token}"
