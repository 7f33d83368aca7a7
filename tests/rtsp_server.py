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
    """argv: PORT [WIDTH HEIGHT FPS [USER PASSWORD]]; with USER, clients need basic auth.
    Mount /test is a live test pattern; /silent accepts clients but never sends a frame."""
    port = sys.argv[1]
    width, height, fps = (sys.argv[2:5] if len(sys.argv) >= 5 else ["160", "120", "15"])
    user, password = (sys.argv[5:7] if len(sys.argv) >= 7 else [None, None])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
    )
    silent = GstRtspServer.RTSPMediaFactory()
    # An appsrc nobody feeds: the session is set up, no frame ever comes.
    silent.set_launch("( appsrc is-live=true format=time caps=video/x-h264,stream-format=byte-stream,alignment=au "
                      "! h264parse ! rtph264pay name=pay0 pt=96 )")
    server.get_mount_points().add_factory("/silent", silent)
    if user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(perms)
    factory.set_shared(False)  # each client its own encoder, like separate cameras
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit("rtsp server: cannot bind")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
