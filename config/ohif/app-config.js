/** @type {AppTypes.Config} */
// OHIF 3 (@ohif/app 3.13) configuration for a site behind authsvc. Serve it as OHIF's
// app-config.js, with OHIF at the root of its own origin (the prebuilt viewer's webpack public
// path is "/") and that origin's nginx passing /dicom-web/ (and /orthanc/ in the plugin
// layout) on to authsvc's nginx, so the viewer makes same-origin requests only.
//
// One DICOMweb data source, two ways to point it:
//   * ?album=<album id> (the album page's "OHIF" link, authsvc's public_ohif_root): the album's
//     own DICOMweb root, /dicom-web/albums/<id>. The album root accepts a Keycloak token of a
//     member or an album read token (Bearer, or OHIF's ?token=).
//   * otherwise (OHIF share links, ?token=sh1...): Orthanc's DICOMweb root below, through the
//     authorization plugin or the nginx gate, which decide on the link's token.
//
// Credentials: OHIF sends the ?token= of its viewer URL as "Authorization: Bearer" and strips it
// from the address bar. For signed-in album browsing, configure OHIF's own Keycloak sign-in
// (the "oidc" block below, a public client with PKCE); a site that also serves anonymous share
// links needs a second OHIF origin without "oidc" for them (with "oidc" set, OHIF asks everyone
// to sign in).
//
// Tested end to end by tests/integration/test_ohif.py (this very file, ORTHANC_DICOMWEB
// adjusted to the gate layout).

// Orthanc's DICOMweb root on this origin: /orthanc/dicom-web behind nginx/plugin.conf.template,
// /dicom-web behind nginx/gate.conf.template (Orthanc at the site root).
const ORTHANC_DICOMWEB = '/orthanc/dicom-web';
// authsvc album ids: letters, digits, '-' and '_' only (anything else is ignored).
const ALBUM_ID = /^[A-Za-z0-9_-]{1,64}$/;

function authsvcRoots(config, query) {
  let album = null;
  if (query && typeof query.get === 'function') {
    album = query.get('album');
  }
  if (!album) {
    album = new URLSearchParams(window.location.search).get('album');
  }
  const path = album && ALBUM_ID.test(album) ? `/dicom-web/albums/${album}` : ORTHANC_DICOMWEB;
  const root = window.location.origin + path;
  return { ...config, qidoRoot: root, wadoRoot: root, wadoUriRoot: root };
}

window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'authsvc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'authsvc',
      configuration: {
        friendlyName: 'authsvc',
        name: 'authsvc',
        qidoRoot: window.location.origin + ORTHANC_DICOMWEB,
        wadoRoot: window.location.origin + ORTHANC_DICOMWEB,
        wadoUriRoot: window.location.origin + ORTHANC_DICOMWEB,
        // OHIF 3.13 sends includefield lists whatever this says; album roots pass them on to
        // Orthanc as repeated fields.
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
        onConfiguration: (config, { query } = {}) => authsvcRoots(config, query),
      },
    },
  ],
  // Signed-in album browsing (see the header): uncomment and fill in.
  // oidc: [
  //   {
  //     authority: 'https://pacs.example.org/keycloak/realms/orthanc',
  //     client_id: 'ohif',
  //     redirect_uri: '/callback',
  //     response_type: 'code',
  //     scope: 'openid',
  //     post_logout_redirect_uri: '/',
  //   },
  // ],
};
