// The cache key of authsvc's gate decisions, for nginx/gate.conf.template (njs, nginx's
// JavaScript module: `js_import` + `js_set $authsvc_gate_key authsvc_gate.key`).
//
// nginx may reuse a "yes" from authsvc for a few seconds (authsvc says how long, with
// X-Accel-Expires; it never lets a "no" be reused). The key decides which requests share one
// decision, so it must hold everything the decision depends on:
//
//  * the method;
//  * every request header, in order, duplicates included. authsvc reads credentials from
//    Authorization, the token header and the API key header, whose name is a setting; hashing
//    all headers means a credential in any header, under any name, is part of the key. Only a
//    few headers that change on every request and that authsvc never reads are left out, so a
//    viewer's requests can share a key;
//  * the scope: the whole Orthanc URI (path and query, as the client sent it; the templates'
//    $authsvc_gate_uri, without any prefix Orthanc is mounted under), except for
//    DICOMweb WADO/QIDO reads below one study, which all share the study's scope. authsvc
//    decides those on the study alone (authsvc/orthanc/routes.py: every such path is a READ
//    of a resource of that study), and Orthanc answers 404 when a series or instance UID is
//    asked for under a study it is not part of, so a shared decision can't reach another
//    study. Only exact, well-formed shapes are grouped: anything else (dot segments, escapes,
//    case variants, a trailing slash, extra query arguments, bulk data) keeps its own key and
//    authsvc sees it.
//
// The key is a SHA-256 digest: nginx writes a cache entry's key into the entry's file, and
// tokens and API keys must never be written to disk.

// Headers authsvc never reads and that change from one request to the next (Accept: a
// viewer asks for metadata as JSON, then for frames as multipart).
const VOLATILE = {
    'x-request-id': 1, 'traceparent': 1, 'tracestate': 1, 'range': 1, 'if-range': 1,
    'if-none-match': 1, 'if-modified-since': 1, 'cache-control': 1, 'pragma': 1,
    'content-length': 1, 'accept': 1,
};

// No RegExp here: with njs 0.7 every request gets its own copy of the module's objects, and
// compiled patterns made that copy cost more than the rest of the gate's decision cache.

const STUDY_TAILS = { 'series': 1, 'instances': 1, 'metadata': 1, 'rendered': 1, 'thumbnail': 1 };
const SERIES_TAILS = { 'instances': 1, 'metadata': 1, 'rendered': 1, 'thumbnail': 1 };
const INSTANCE_TAILS = { 'metadata': 1, 'rendered': 1, 'thumbnail': 1 };
const FRAME_TAILS = { 'rendered': 1, 'thumbnail': 1 };

// Digit groups separated by single dots (sep 46) or commas (sep 44), nothing else, at most max
// characters: a DICOM UID as authsvc's classifier reads it, or a frame list.
function groups(text, sep, max) {
    if (text.length === 0 || text.length > max) {
        return false;
    }
    let empty = true;
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c === sep && !empty) {
            empty = true;
        } else if (c >= 48 && c <= 57) {
            empty = false;
        } else {
            return false;
        }
    }
    return !empty;
}

function isUid(text) {
    return groups(text, 46, 64);
}

// True for `tail` (the segments after a study UID) naming a WADO/QIDO read below that study.
function studyRead(tail) {
    if (tail.length === 0) {
        return true;
    }
    if (tail.length === 1) {
        return STUDY_TAILS[tail[0]] === 1;
    }
    if (tail[0] !== 'series' || !isUid(tail[1])) {
        return false;
    }
    const series = tail.slice(2);
    if (series.length <= 1) {
        return series.length === 0 || SERIES_TAILS[series[0]] === 1;
    }
    if (series[0] !== 'instances' || !isUid(series[1])) {
        return false;
    }
    const instance = series.slice(2);
    if (instance.length <= 1) {
        return instance.length === 0 || INSTANCE_TAILS[instance[0]] === 1;
    }
    return instance[0] === 'frames' && groups(instance[1], 44, 4096) &&
        (instance.length === 2 || (instance.length === 3 && FRAME_TAILS[instance[2]] === 1));
}

// The only query a grouped read may carry: none, or one token argument (OE2, share links).
function plainQuery(query) {
    if (query === '') {
        return true;
    }
    if (query.slice(0, 6) !== 'token=') {
        return false;
    }
    for (let i = 6; i < query.length; i++) {
        const c = query.charCodeAt(i);
        const ok = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) ||
            c === 46 || c === 95 || c === 126 || c === 45;  // . _ ~ -
        if (!ok) {
            return false;
        }
    }
    return true;
}

// Return the scope a request's decision is keyed on (see the header of this file).
function scope(method, uri) {
    if (method !== 'GET' && method !== 'HEAD') {
        return 'uri ' + uri;
    }
    const q = uri.indexOf('?');
    const path = q < 0 ? uri : uri.slice(0, q);
    const query = q < 0 ? '' : uri.slice(q + 1);
    const segments = path.split('/');  // "", "dicom-web", "studies", uid, ...
    if (segments.length < 4 || segments[0] !== '' || segments[1] !== 'dicom-web' ||
        segments[2] !== 'studies' || !isUid(segments[3]) || !plainQuery(query) ||
        !studyRead(segments.slice(4))) {
        return 'uri ' + uri;
    }
    return 'study ' + segments[3] + '?' + query;
}

// js_set handler: the hex SHA-256 of method, scope and headers, or "" when it cannot be
// computed; the template then neither reads nor writes the cache for this request.
function key(r) {
    try {
        return digest(r);
    } catch (e) {
        r.error('authsvc_gate.key: ' + e.message);
        return '';
    }
}

function digest(r) {
    const method = r.variables.request_method || '';
    // require() here, not a top-level import: with njs 0.7, an imported module is copied
    // into every request's VM, which cost ~10x more than the whole key on a loaded machine.
    const hash = require('crypto').createHash('sha256');
    const uri = r.variables.authsvc_gate_uri;  // the Orthanc URI (the templates define it)
    if (!uri) {
        throw new Error('$authsvc_gate_uri is empty');
    }
    hash.update('authsvc-gate-v1\n' + method + '\n' + scope(method, uri) + '\n');
    const headers = r.rawHeadersIn;
    for (let i = 0; i < headers.length; i++) {
        const name = headers[i][0].toLowerCase();
        if (VOLATILE[name] !== 1) {
            hash.update(name.length + ':' + name + headers[i][1].length + ':' + headers[i][1] + '\n');
        }
    }
    return hash.digest('hex');
}

export default { key, scope };
