#!/bin/sh
# Installs what the live tests (tests/test_rtsp.py, tests/test_browser.py) need; idempotent.
# The tests start and stop the RTSP servers and the browser themselves.
# Usage (as root, from the repository root): sh tests/support/ci_services.sh [VENV]
set -eu
VENV="${1:-.venv}"
PKGS="gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools python3-gi python3-gst-1.0 \
chromium chromium-driver ffmpeg"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
# Playwright drives Debian's /usr/bin/chromium (executable_path); never 'playwright install'.
"$VENV/bin/python" -c "import playwright" 2>/dev/null || "$VENV/bin/pip" install playwright
"$VENV/bin/python" -c "import pydantic_settings" 2>/dev/null || "$VENV/bin/pip" install pydantic-settings
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')"
