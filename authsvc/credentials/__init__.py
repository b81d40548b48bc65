"""authsvc.credentials: the credentials authsvc issues, checks, lists and revokes.

One module per concern, the pure ones (no I/O) first:

* :mod:`~authsvc.credentials.sealing` — AES-256-GCM key rings that seal every token authsvc mints;
* :mod:`~authsvc.credentials.album_tokens` — the sealed upload and album-read tokens (one album);
* :mod:`~authsvc.credentials.share_links` — the plugin's sealed share and instant links, legacy
  HS256 links, resource matching, viewer links;
* :mod:`~authsvc.credentials.api_keys` — the API key text: generate, parse, verify;

and those that keep the database rows that make credentials listable and revocable:

* :mod:`~authsvc.credentials.upload_token_records` — upload token rows and their use count;
* :mod:`~authsvc.credentials.share_link_records` — the share link service (create, validate,
  decode, list, revoke);
* :mod:`~authsvc.credentials.api_key_records` — API key rows (create, list, revoke);
* :mod:`~authsvc.credentials.lifecycle` — credentials follow their maker's rights (the facts
  :func:`authsvc.policy.decide_credential_backing` decides on).

Album read token rows: :mod:`authsvc.credentials.read_token_records`.
"""
