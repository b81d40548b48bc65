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
//    decides those on the study alone (authsvc/orthanc_routes.py: every such path is a READ
//    of a resource of that study), and Orthanc answers 404 when a series or instance UID is
//    asked for under a study it is not part of, so a shared decision can't reach another
//    study. Only exact, well-formed shapes are grouped: anything else (dot segments, escapes,
//    case variants, a trailing slash, extra query arguments, bulk data) keeps its own key and
//    authsvc sees it.
//
// The key is a SHA-256 digest: nginx writes a cache entry's key into the entry's file, and
// tokens and API keys must never be written to disk.

import crypto from 'crypto';

// Headers authsvc never reads and that change from one request to the next.
const VOLATILE = {
    'x-request-id': 1, 'traceparent': 1, 'tracestate': 1, 'range': 1, 'if-range': 1,
    'if-none-match': 1, 'if-modified-since': 1, 'cache-control': 1, 'pragma': 1,
    'content-length': 1,
};

const UID = '[0-9]+(?:\\.[0-9]+)*';  // as authsvc's classifier: digits and dots
const UID_PART = /^[0-9.]{1,64}$/;  // ... and at most 64 characters
const STUDY_READ = new RegExp(
    '^/dicom-web/studies/(' + UID + ')(?:' +
        '/series|/instances|/metadata|/rendered|/thumbnail' +
        '|/series/(' + UID + ')(?:' +
            '/instances|/metadata|/rendered|/thumbnail' +
            '|/instances/(' + UID + ')(?:' +
                '/metadata|/rendered|/thumbnail' +
                '|/frames/[0-9]+(?:,[0-9]+)*(?:/rendered|/thumbnail)?' +
            ')?' +
        ')?' +
    ')?$'
);

// Return the scope a request's decision is keyed on (see the header of this file).
function scope(method, uri) {
    if (method !== 'GET' && method !== 'HEAD') {
        return 'uri ' + uri;
    }
    const q = uri.indexOf('?');
    const path = q < 0 ? uri : uri.slice(0, q);
    const query = q < 0 ? '' : uri.slice(q + 1);
    // The only query a grouped read may carry: one token argument (OE2 and share links).
    if (query !== '' && !/^token=[A-Za-z0-9._~-]*$/.test(query)) {
        return 'uri ' + uri;
    }
    const m = STUDY_READ.exec(path);
    if (m === null || m.slice(1).some((uid) => uid !== undefined && !UID_PART.test(uid))) {
        return 'uri ' + uri;
    }
    return 'study ' + m[1] + '?' + query;
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
    const hash = crypto.createHash('sha256');
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
