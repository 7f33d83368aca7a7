#!/usr/bin/env bash
# Debian packages the test suite needs: libGL for OpenCV (trackers), redis-server and redis-cli (tests start their
# own servers, and join three into a Redis Cluster),
# GStreamer's RTSP server with PyGObject (a real RTSP server we did not write) and
# prometheus (a real Prometheus scrapes a run; promtool checks deploy/prometheus) and
# chromium with a font (a real headless browser shows the `fpnstream preview` page).
# Installs only what is missing; needs root (or sudo) and apt-get.
set -euo pipefail

have_rtsp() {
  /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" 2>/dev/null \
    && command -v gst-inspect-1.0 >/dev/null && gst-inspect-1.0 x264enc >/dev/null 2>&1 \
    && gst-inspect-1.0 rtph264pay >/dev/null 2>&1 && gst-inspect-1.0 videotestsrc >/dev/null 2>&1
}

have_chromium() {
  { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]
}

# OpenCV (a dependency of the `trackers` library) loads libGL and GLib when imported.
have_gl() {
  ldconfig -p | grep -q 'libGL\.so\.1 ' && ldconfig -p | grep -q 'libgthread-2\.0\.so\.0 '
}

if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null && have_rtsp \
    && have_chromium && have_gl; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  redis-server redis-tools prometheus python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools \
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
  chromium fonts-dejavu-core libgl1 libglib2.0-0 >/dev/null
# The package may start a Prometheus service on :9090; tests run their own on free ports.
(command -v systemctl >/dev/null && $SUDO systemctl disable --now prometheus >/dev/null 2>&1) || true
have_rtsp || { echo "system-deps: GStreamer RTSP server still unusable after install" >&2; exit 1; }
have_chromium || { echo "system-deps: chromium (or its font) still missing after install" >&2; exit 1; }
