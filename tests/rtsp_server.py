"""Launch GStreamer's RTSP server (gst-rtsp-server, Debian packages) for tests.

Run with the system Python that has PyGObject: /usr/bin/python3 tests/rtsp_server.py PORT
It serves rtsp://127.0.0.1:PORT/test, a live H.264 test pattern, until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, width, height, fps = sys.argv[1], *(sys.argv[2:5] or ["160", "120", "15"])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(False)  # each client its own encoder, like separate cameras
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit("rtsp server: cannot bind")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
