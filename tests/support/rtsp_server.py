"""A real RTSP server for the tests: GStreamer's gst-rtsp-server, run with Debian's /usr/bin/python3 (gi).

    /usr/bin/python3 rtsp_server.py --port 8554 --frames 'dir/f%03d.png' --fps 15   # PLAY /clip, looped
    /usr/bin/python3 rtsp_server.py --port 8555 --relay                     # RECORD /in -> PLAY /out
    /usr/bin/python3 rtsp_server.py --port 8556 --file clip.mkv --audio pcmu  # PLAY /file: H.264 + audio, once

The relay works like MediaMTX: a publisher pushes H.264 to ``/in`` (RTSP RECORD) and any
number of readers play it from ``/out``.  Prints ``READY <port>`` once it listens; stops on
SIGTERM/SIGINT.  Nothing here runs in the project's venv (it needs gi).
"""
from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

H264_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"
AUDIO_PAY = {"pcmu": "rtppcmupay", "pcma": "rtppcmapay", "aac": "aacparse ! rtpmp4gpay",
             "opus": "opusparse ! rtpopuspay"}


class Relay:
    """Samples from the RECORD mount's appsink go to every PLAY media's appsrc."""

    def __init__(self) -> None:
        self.sources: list = []
        self.caps = None

    def on_record(self, factory, media) -> None:
        sink = media.get_element().get_by_name("sink")
        sink.connect("new-sample", self.on_sample)

    def on_play(self, factory, media) -> None:
        src = media.get_element().get_by_name("src")
        self.sources.append(src)
        media.connect("unprepared", lambda m: self.sources.remove(src) if src in self.sources else None)

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        buf = sample.get_buffer().copy()
        buf.pts = buf.dts = Gst.CLOCK_TIME_NONE  # the PLAY side stamps on arrival (do-timestamp)
        for src in list(self.sources):
            src.emit("push-buffer", buf)
        return Gst.FlowReturn.OK


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--frames", help="numbered PNGs (printf pattern), encoded live to H.264 and looped on /clip")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--relay", action="store_true", help="RECORD /in -> PLAY /out")
    ap.add_argument("--file", help="a Matroska file (H.264 + one audio stream) played once on /file, in real time")
    ap.add_argument("--audio", choices=sorted(AUDIO_PAY), default="pcmu", help="the --file's audio codec")
    args = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_thread_pool().set_max_threads(32)  # or DESCRIBE can deadlock a publisher
    mounts = server.get_mount_points()
    if args.frames:
        # PNG frames rather than a .h264 file: multifilesrc gives raw H.264 no timestamps, PNGs get them
        f = GstRtspServer.RTSPMediaFactory()
        f.set_launch(f'( multifilesrc location="{args.frames}" loop=true caps="image/png,framerate={args.fps}/1" ! '
                     f'pngdec ! videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency '
                     f'speed-preset=ultrafast key-int-max={args.fps} bframes=0 ! '
                     f'rtph264pay name=pay0 pt=96 config-interval=1 )')
        f.set_shared(True)
        mounts.add_factory("/clip", f)
    if args.file:
        f = GstRtspServer.RTSPMediaFactory()
        f.set_launch(f'( filesrc location="{args.file}" ! matroskademux name=d d.video_0 ! queue ! h264parse ! '
                     f'rtph264pay name=pay0 pt=96 config-interval=1 d.audio_0 ! queue ! {AUDIO_PAY[args.audio]} '
                     f'name=pay1 )')
        mounts.add_factory("/file", f)
    if args.relay:
        relay = Relay()
        rec = GstRtspServer.RTSPMediaFactory()
        rec.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        rec.set_launch(f"( rtph264depay name=depay0 ! h264parse config-interval=-1 ! {H264_CAPS} ! "
                       f"appsink name=sink emit-signals=true sync=false )")
        rec.connect("media-configure", relay.on_record)
        mounts.add_factory("/in", rec)
        play = GstRtspServer.RTSPMediaFactory()
        play.set_launch(f'( appsrc name=src is-live=true do-timestamp=true format=time caps="{H264_CAPS}" ! '
                        f'h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=1 )')
        play.set_shared(True)
        play.connect("media-configure", relay.on_play)
        mounts.add_factory("/out", play)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}; choose a free port", file=sys.stderr)
        return 2
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
