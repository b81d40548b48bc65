#!/bin/bash
# First start of the stack's PostgreSQL (docker-entrypoint-initdb.d): one database and one
# owner per service, so a leak of one service's password exposes only its own data.
#   authsvc   authsvc's albums, memberships, tokens, roles configuration and audit trail
#   orthanc   Orthanc's index (shared by every Orthanc of the stack)
#   keycloak  Keycloak's realm, users and sessions
# Passwords come from the environment (.env); they are passed as psql variables, never
# spliced into the SQL text.
set -euo pipefail

for service in authsvc orthanc keycloak; do
    var="${service^^}_DB_PASSWORD"
    password="${!var:?$var is not set}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v name="$service" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
