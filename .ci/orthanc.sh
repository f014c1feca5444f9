#!/usr/bin/env bash
# A throwaway Orthanc PACS for the DICOMweb tests; prints its DICOMweb URL on stdout, logs on stderr.
#
#   export DXGRAPH_TEST_ORTHANC_URL="$(bash .ci/orthanc.sh)"
#
# Installs Debian's orthanc, orthanc-dicomweb and dicom3tools when missing (needs root), and starts
# Orthanc on 127.0.0.1 only: HTTP (REST and DICOMweb) on $DXGRAPH_ORTHANC_PORT (default 58042), DICOM on
# the next port, storage and log in $DXGRAPH_ORTHANC_DIR (default /tmp/dxgraph-orthanc); a study counts as
# stable (its StableStudy change, which dxgraph pacs watch waits for) 2 s after its last instance. Authentication is
# on, with one registered user whose fixed test credentials are
#
#   user dxgraph, password dxgraph-test-only        (DXGRAPH_PACS_USERNAME / DXGRAPH_PACS_PASSWORD)
#
# DIMSE (dxgraph's dicom://DXGRAPHTEST@127.0.0.1:<DICOM port> URLs): Orthanc's AE title is DXGRAPHTEST and it
# checks the called AE title; one peer is registered, dxgraph's default calling AE title DXGRAPH, allowed
# C-ECHO, C-FIND, C-GET and C-STORE (no C-MOVE). Orthanc cannot bind its DICOM port to loopback only: it
# accepts no association from another calling AE title. Idempotent: a second run reuses the server already answering on that port. Stop it with:
#   kill "$(cat /tmp/dxgraph-orthanc/orthanc.pid)"
set -euo pipefail

PORT="${DXGRAPH_ORTHANC_PORT:-58042}"
DICOM_PORT=$((PORT + 1))
DATA="${DXGRAPH_ORTHANC_DIR:-/tmp/dxgraph-orthanc}"
USER_NAME=dxgraph
PASSWORD=dxgraph-test-only
CALLING_AET=DXGRAPH
URL="http://127.0.0.1:$PORT/dicom-web/"
log() { echo "orthanc.sh: $*" >&2; }

answers() { curl -fsS -o /dev/null -u "$USER_NAME:$PASSWORD" "http://127.0.0.1:$PORT/system" 2>/dev/null; }

if ! command -v Orthanc >/dev/null || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
    || ! command -v dciodvfy >/dev/null || ! command -v curl >/dev/null; then
    log "installing orthanc, orthanc-dicomweb, dicom3tools (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools curl >&2
fi

if ! answers; then
    mkdir -p "$DATA/storage"
    chmod 700 "$DATA"
    cat >"$DATA/config.json" <<JSON
{
  "Name": "DXGRAPH-TEST",
  "HttpPort": $PORT,
  "DicomPort": $DICOM_PORT,
  "DicomAet": "DXGRAPHTEST",
  "DicomCheckCalledAet": true,
  "DicomAlwaysAllowEcho": false,
  "DicomAlwaysAllowStore": false,
  "DicomAlwaysAllowFind": false,
  "DicomAlwaysAllowGet": false,
  "DicomAlwaysAllowMove": false,
  "DicomModalities": {
    "dxgraph": {"AET": "$CALLING_AET", "Host": "127.0.0.1", "Port": $((DICOM_PORT + 1)),
                "AllowEcho": true, "AllowFind": true, "AllowGet": true, "AllowMove": false, "AllowStore": true}
  },
  "RemoteAccessAllowed": false,
  "StableAge": 2,
  "AuthenticationEnabled": true,
  "RegisteredUsers": {"$USER_NAME": "$PASSWORD"},
  "StorageDirectory": "$DATA/storage",
  "IndexDirectory": "$DATA/storage",
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
}
JSON
    chmod 600 "$DATA/config.json"
    log "starting Orthanc on 127.0.0.1:$PORT (DICOM $DICOM_PORT), storage in $DATA"
    nohup Orthanc "$DATA/config.json" >"$DATA/orthanc.log" 2>&1 &
    echo $! >"$DATA/orthanc.pid"
    for _ in $(seq 1 120); do
        answers && break
        if ! kill -0 "$(cat "$DATA/orthanc.pid")" 2>/dev/null; then
            log "Orthanc exited; its log:"
            tail -n 30 "$DATA/orthanc.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    answers || { log "Orthanc did not answer within 60 s; see $DATA/orthanc.log"; exit 1; }
fi
curl -fsS -o /dev/null -u "$USER_NAME:$PASSWORD" "${URL}studies" \
    || { log "Orthanc answers but its DICOMweb plugin does not (${URL}studies)"; exit 1; }
log "Orthanc is up; user $USER_NAME"
echo "$URL"
