"""Adding studies to an album (by UID in batches, or picked from a search) and taking them out."""

from __future__ import annotations

import re
from typing import Any

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc import albums
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.policy import Action
from authsvc.policy import Target
from authsvc.policy import sees_every_study
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._common import allowed
from authsvc.views.admin._common import dicom_date
from authsvc.views.admin._common import form_int
from authsvc.views.admin._common import page_caller
from authsvc.views.admin._common import person_name

#: Studies added per request of a bulk add; the page shows progress between batches.
ADD_BATCH_SIZE = 50
MAX_REFS_PER_ADD = 5000
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_STUDY_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _split_refs(text: str) -> list[str]:
    """Split pasted study UIDs (lines, spaces, commas or semicolons), keeping their order."""
    return list(dict.fromkeys(t for t in re.split(r"[\s,;]+", text) if t))


def _looks_like_study(ref: str) -> bool:
    return bool(_ORTHANC_ID.fullmatch(ref) or (_STUDY_UID.fullmatch(ref) and len(ref) <= 64))


@bp.post("/albums/<album_id>/studies/add")
@signed_in
def add_studies(album_id: str) -> WerkzeugResponse | str:
    """Add studies by UID, in batches; between batches the page shows progress and continues.

    The remaining references and the running totals travel in the progress page's form, so
    nothing is kept on the server between batches and a lost page loses nothing done so far.
    """
    caller = page_caller()
    refs = request.form.getlist("study") + _split_refs(request.form.get("uids", ""))
    refs = list(dict.fromkeys(r.strip() for r in refs if r.strip()))
    if not refs:
        flash("Paste at least one Study Instance UID, or pick studies from the list.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    if len(refs) > MAX_REFS_PER_ADD:
        flash(f"At most {MAX_REFS_PER_ADD} studies can be added at once.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    totals = {k: form_int(k) for k in ("added", "present", "missing", "done", "total")}
    totals["total"] = totals["total"] or len(refs)
    missing = [m for m in request.form.get("missing_list", "").split() if m][:200]
    batch, rest = refs[:ADD_BATCH_SIZE], refs[ADD_BATCH_SIZE:]
    valid = [r for r in batch if _looks_like_study(r)]
    for ref in batch:
        if ref not in valid:
            totals["missing"] += 1
            missing.append(ref)
    if valid:
        for result in albums.add_studies(services().archive, caller, album_id, valid):
            if result.status == "added":
                totals["added"] += 1
            elif result.status == "already-present":
                totals["present"] += 1
            else:
                totals["missing"] += 1
                missing.append(result.ref)
    totals["done"] += len(batch)
    if rest:
        return render_template(
            "admin/progress.html",
            album_id=album_id,
            rest=rest,
            totals=totals,
            missing=missing[:200],
            percent=int(100 * totals["done"] / max(1, totals["total"])),
        )
    parts = [f"{totals['added']} stud{'y' if totals['added'] == 1 else 'ies'} added"]
    if totals["present"]:
        parts.append(f"{totals['present']} already in the album")
    if totals["missing"]:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        parts.append(f"{totals['missing']} not found (or not visible to you): {shown}")
    flash("Done: " + "; ".join(parts) + ".", "success" if not totals["missing"] else "info")
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/studies/remove")
@signed_in
def remove_studies(album_id: str) -> WerkzeugResponse:
    """Take the ticked studies out of the album (managers); they stay in the archive."""
    refs = [r for r in request.form.getlist("study") if r][: albums.MAX_BULK]
    if not refs:
        flash("Tick the studies to take out of the album first.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    results = albums.remove_studies(services().archive, page_caller(), album_id, refs)
    removed = sum(1 for r in results if r.status == "removed")
    flash(
        f"{removed} stud{'y' if removed == 1 else 'ies'} taken out of the album "
        "(they are still in the archive).",
        "success",
    )
    return redirect(url_for("admin.album", album_id=album_id))


@bp.get("/albums/<album_id>/pick")
@signed_in
def pick_studies(album_id: str) -> str:
    """Search the studies the user can already see, and tick some to add them."""
    caller = page_caller()
    view = albums.get_album(caller, album_id)
    role = albums.album_role(caller, album_id)
    if not allowed(caller, role, Action.ALBUM_STUDY_ADD, Target(study_visible_to_actor=True)):
        raise Forbidden("Your role in this album does not allow adding studies.")
    text = (request.args.get("q") or "").strip()[:64]
    found: list[dict[str, Any]] = []
    error = None
    if text:
        try:
            found = _visible_studies(caller, view.album, text)
        except DependencyUnavailable:
            error = "The image archive (Orthanc) is not answering. Try again in a minute."
    return render_template(
        "admin/pick.html", view=view, q=text, found=found, error=error, limit=PICK_LIMIT
    )


PICK_LIMIT = 100


def _visible_studies(caller: albums.Caller, album_row: Any, text: str) -> list[dict[str, Any]]:
    """Studies matching the text (patient name or id, description, UID) the caller can see."""
    client = services().orthanc.get(album_row.server_id or None)
    if client is None:
        raise DependencyUnavailable("This album's Orthanc server is not configured.")
    member_labels, _ = albums.album_grants(caller.subject, caller.groups, caller.email, bind=False)
    labels: list[str] = []
    if not sees_every_study(caller.actor, caller.labels):
        labels = sorted(set(member_labels) | (set(caller.labels) - {"*"}))
        if not labels:
            return []
    pattern = "*" + re.sub(r"[*?\\]", "", text) + "*"
    queries = [{"PatientName": pattern}, {"PatientID": pattern}, {"StudyDescription": pattern}]
    if _STUDY_UID.fullmatch(text):
        queries.append({"StudyInstanceUID": text})
    seen: dict[str, dict[str, Any]] = {}
    for query in queries:
        for study in client.find_studies(
            labels=labels,
            constraint="Any",
            query=query,
            expand=True,
            limit=PICK_LIMIT,
            requested_tags=albums.STUDY_LIST_TAGS,
        ):
            if not isinstance(study, dict) or str(study.get("ID")) in seen:
                continue
            study_labels = [str(x) for x in study.get("Labels", [])]
            if not albums.can_see_study(caller, study_labels, member_labels):
                continue
            tags: dict[str, Any] = {}
            for key in ("PatientMainDicomTags", "MainDicomTags", "RequestedTags"):
                if isinstance(study.get(key), dict):
                    tags.update(study[key])
            seen[str(study["ID"])] = {
                "id": str(study["ID"]),
                "uid": tags.get("StudyInstanceUID") or "",
                "patient": person_name(tags.get("PatientName")),
                "patient_id": tags.get("PatientID") or "",
                "date": dicom_date(tags.get("StudyDate")),
                "description": tags.get("StudyDescription") or "",
                "modalities": str(tags.get("ModalitiesInStudy") or "").replace("\\", ", "),
                "in_album": album_row.label in study_labels,
            }
            if len(seen) >= PICK_LIMIT:
                break
    return list(seen.values())
