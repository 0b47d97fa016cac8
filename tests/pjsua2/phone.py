"""One softphone for tests/sip_pjsua2.rs: a pjsua2 (PJSIP) endpoint with one account that registers
to Callguard's SIP service, then, as asked, registers again once its nonce has expired, answers one
call, or places one.

What it sees goes to stdout, one fact per line, for the test to assert:
  registration <code> <reason>      each final answer to a REGISTER (pjsua's onRegState)
  warning <text>                    the Warning header of that answer, when it has one
  challenge <method> <code> stale=<true|false>
                                    each 401/407 received (from PJSIP's message log)
  incoming crypto=<yes|no>          the INVITE the callee received, with or without SDP a=crypto
  call <state> <code>               call states: CONFIRMED, DISCONNECTED (with the last status)
  media proto=<RTP/AVP|RTP/SAVP|...> crypto=<yes|no> remote=<address:port>
                                    the audio stream once media is up, whether the SDP answer
                                    the caller received (or the offer the callee did) kept a=crypto,
                                    and where this end sends its RTP
  rtp rx=<packets> tx=<packets>     the audio stream's RTP counts, a second into the call
  media again remote=<address:port> the audio stream after a re-INVITE (--reinvite)
  rtp-after rx=<packets> tx=<packets>
                                    the counts a second and a half after the re-INVITE
  injected <count> from=<address:port> to=<address:port>
                                    plain RTP sent as if from this phone's own media port
                                    (--inject-plain-rtp, on the answering side)
  done                              the script ran to its end
Exit status 0 when it ran to its end (whatever the server answered), 2 on its own timeout.
PJSIP's full log goes to --log, for the test's failure messages.
"""

import argparse
import selectors
import socket
import struct
import sys
import threading
import time

import pjsua2 as pj


def say(*words):
    print(*words, flush=True)


def warning_of(message):
    """The text of a response's Warning header, where Callguard says why it refused."""
    for line in message.splitlines():
        if line.lower().startswith("warning:"):
            return line.split(":", 1)[1].strip()
    return None


class Log(pj.LogWriter):
    """PJSIP's log to a file; the challenges it receives to stdout."""

    def __init__(self, path, phone):
        super().__init__()
        self.file = open(path, "a") if path else None
        self.phone = phone

    def write(self, entry):
        text = entry.msg
        if self.file:
            self.file.write(text if text.endswith("\n") else text + "\n")
            self.file.flush()
        first = text.split("\n", 1)[0]
        if " RX " not in " " + first and not first.lstrip().startswith("RX"):
            return
        # "RX 512 bytes Response msg 401/REGISTER/cseq=2 (rdata0x...) from TLS 127.0.0.1:5061:"
        if "Response msg 401/" in first or "Response msg 407/" in first:
            code, method = first.split("Response msg ", 1)[1].split("/")[:2]
            say("challenge", method, code, "stale=" + ("true" if "stale=true" in text.lower() else "false"))
        if "Response msg 200/INVITE" in first:
            # The caller's side: whether the answer it received kept its SRTP keys.
            self.phone.answer_crypto = "a=crypto:" in text.lower()


class Account(pj.Account):
    def __init__(self, phone):
        super().__init__()
        self.phone = phone
        self.states = []

    def onRegState(self, prm):
        self.states.append(prm.code)
        say("registration", prm.code, prm.reason.replace(" ", "_") or "-")
        warning = warning_of(prm.rdata.wholeMsg if prm.rdata is not None else "")
        if warning:
            say("warning", warning)

    def onIncomingCall(self, prm):
        call = Call(self, self.phone, prm.callId)
        crypto = "a=crypto:" in prm.rdata.wholeMsg.lower()
        say("incoming", "crypto=" + ("yes" if crypto else "no"))
        self.phone.incoming_crypto = crypto
        self.phone.call = call
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)


class Call(pj.Call):
    def __init__(self, account, phone, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.phone = phone
        self.confirmed_at = None
        self.disconnected = False
        self.media_said = False
        self.stats_said = False
        self.injected = False
        self.renegotiated = False
        self.audio_index = None

    def onCallState(self, prm):
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed_at = time.monotonic()
            say("call", "CONFIRMED", info.lastStatusCode)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            say("call", "DISCONNECTED", info.lastStatusCode)

    def onCallMediaState(self, prm):
        if self.media_said:
            # A re-INVITE: where this end sends its RTP now.
            if self.audio_index is not None and not self.renegotiated:
                self.renegotiated = True
                say("media", "again", "remote=" + self.getStreamInfo(self.audio_index).remoteRtpAddress)
                self.connect_audio(self.audio_index)
            return
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                proto = {
                    pj.PJMEDIA_TP_PROTO_RTP_AVP: "RTP/AVP",
                    pj.PJMEDIA_TP_PROTO_RTP_SAVP: "RTP/SAVP",
                }.get(self.getStreamInfo(index).proto, str(self.getStreamInfo(index).proto))
                crypto = self.phone.incoming_crypto if self.phone.incoming_crypto is not None else self.phone.answer_crypto
                remote = self.getStreamInfo(index).remoteRtpAddress
                say("media", "proto=" + proto, "crypto=" + ("yes" if crypto else "no"), "remote=" + remote)
                self.media_said = True
                self.connect_audio(index)
                self.audio_index = index

    def connect_audio(self, index):
        """Audio both ways: the null sound device's clock drives the bridge, so the stream sends a
        frame every 20 ms and plays what it receives."""
        audio = self.getAudioMedia(index)
        devices = pj.Endpoint.instance().audDevManager()
        devices.getCaptureDevMedia().startTransmit(audio)
        audio.startTransmit(devices.getPlaybackDevMedia())

    def inject_once(self, count):
        """Plain RTP from this end's media port to where it sends its own, half a second in."""
        if self.injected or self.audio_index is None or self.confirmed_at is None:
            return
        if time.monotonic() - self.confirmed_at < 0.5:
            return
        self.injected = True
        local = self.getMedTransportInfo(self.audio_index).localRtpName
        inject_plain_rtp(local, self.getStreamInfo(self.audio_index).remoteRtpAddress, count)

    def say_stats_once(self):
        """The stream's RTP counts, once, a second into the call."""
        if self.stats_said or self.audio_index is None or self.confirmed_at is None:
            return
        if time.monotonic() - self.confirmed_at < 1:
            return
        stat = self.getStreamStat(self.audio_index)
        say("rtp", "rx=%d" % stat.rtcp.rxStat.pkt, "tx=%d" % stat.rtcp.txStat.pkt)
        self.stats_said = True


def inject_plain_rtp(source, destination, count):
    """RTP in the clear, `count` packets, as if this phone sent them from its media port `source`:
    a raw socket lets the script write the UDP header with that source port while pjsua2 holds
    the port (root, as the test command runs). IPv4 allows a zero UDP checksum (no checksum)."""
    source_port = int(source.rsplit(":", 1)[1])
    host, port = destination.rsplit(":", 1)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    for sequence in range(count):
        # Version 2, PCMU, its own SSRC; 160 bytes of silence.
        payload = struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 0x0BADF00D) + b"\xff" * 160
        header = struct.pack("!HHHH", source_port, int(port), 8 + len(payload), 0)
        raw.sendto(header + payload, (host, 0))
        time.sleep(0.005)
    raw.close()
    say("injected", count, "from=" + source, "to=" + destination)


class SlowLink(threading.Thread):
    """A TCP relay between the phone and the server that, once armed, holds the phone's first bytes
    after the server's next answer for `delay` seconds: the digest answer to a challenge then
    arrives after its nonce has expired, as over a slow link. The bytes are TLS records, relayed
    untouched: the TLS session stays the phone's and the server's."""

    def __init__(self, target, delay):
        super().__init__(daemon=True)
        self.target = target
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.server_answered = False
        self.held = False

    def run(self):
        phone, _ = self.listener.accept()
        host, port = self.target.rsplit(":", 1)
        server = socket.create_connection((host, int(port)))
        selector = selectors.DefaultSelector()
        selector.register(phone, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, phone)
        while True:
            for key, _ in selector.select():
                data = key.fileobj.recv(65536)
                if not data:
                    return
                if self.armed.is_set() and not self.held:
                    if key.fileobj is server:
                        self.server_answered = True
                    elif self.server_answered:
                        time.sleep(self.delay)
                        self.held = True
                key.data.sendall(data)


class Phone:
    def __init__(self, args):
        self.args = args
        self.incoming_crypto = None
        self.answer_crypto = None
        self.call = None

    def run(self):
        args = self.args
        deadline = time.monotonic() + args.timeout
        endpoint = pj.Endpoint()
        endpoint.libCreate()
        config = pj.EpConfig()
        # Polled from this thread: the callbacks run here, between libHandleEvents calls.
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.maxCalls = 4
        log = Log(args.log, self)
        config.logConfig.writer = log
        config.logConfig.level = 5
        config.logConfig.consoleLevel = 5
        config.logConfig.msgLogging = True
        config.logConfig.decor = 0
        endpoint.libInit(config)
        endpoint.audDevManager().setNullDev()

        transport = pj.TransportConfig()
        transport.boundAddress = "127.0.0.1"
        transport.port = 0
        if args.transport == "tls":
            tls = transport.tlsConfig
            tls.method = pj.PJSIP_TLSV1_2_METHOD
            if args.cert:
                tls.certFile = args.cert
                tls.privKeyFile = args.key
            if args.ca:
                # The server's certificate is the node's CallManager certificate, issued by the
                # cluster CA for the node's address.
                tls.CaListFile = args.ca
                tls.verifyServer = True
            kind = pj.PJSIP_TRANSPORT_TLS
        else:
            kind = pj.PJSIP_TRANSPORT_UDP
        endpoint.transportCreate(kind, transport)
        endpoint.libStart()

        slow_link = None
        if args.stale_after is not None:
            slow_link = SlowLink(args.registrar, args.stale_after)
            slow_link.start()
            registrar = "sip:127.0.0.1:%d;transport=%s" % (slow_link.port, args.transport)
        else:
            registrar = "sip:%s;transport=%s" % (args.registrar, args.transport)
        account_config = pj.AccountConfig()
        account_config.idUri = "sip:%s@%s" % (args.line, args.registrar.split(":")[0])
        account_config.regConfig.registrarUri = registrar
        account_config.regConfig.timeoutSec = 300
        # A refusal is final here: no retry, no second registration behind the test's back.
        account_config.regConfig.retryIntervalSec = 0
        account_config.regConfig.firstRetryIntervalSec = 0
        account_config.regConfig.unregWaitMsec = 500
        if args.user:
            account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
        media = account_config.mediaConfig
        media.srtpUse = {"disabled": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
                         "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[args.srtp]
        # SRTP keys only over TLS (the keys travel in the SDP).
        media.srtpSecureSignaling = 1 if args.srtp != "disabled" else 0
        media.transportConfig.port = 0
        media.transportConfig.boundAddress = "127.0.0.1"
        account = Account(self)
        account.create(account_config)

        def pump_until(done):
            while not done():
                if time.monotonic() > deadline:
                    say("timeout")
                    return False
                endpoint.libHandleEvents(20)
            return True

        ok = pump_until(lambda: account.states)
        if ok and args.stale_after is not None and account.states[-1] == 200:
            # Again, with the answer to the challenge held past the nonce's validity: the server
            # says stale=true, and PJSIP answers the new nonce by itself.
            slow_link.armed.set()
            count = len(account.states)
            account.setRegistration(True)
            ok = pump_until(lambda: len(account.states) > count)
        if ok and args.answer and account.states[-1] == 200:
            say("ready")

            def answered_and_ended():
                if self.call is not None and not self.call.disconnected:
                    if args.inject_plain_rtp:
                        self.call.inject_once(args.inject_plain_rtp)
                    self.call.say_stats_once()
                return self.call is not None and self.call.disconnected

            ok = pump_until(answered_and_ended)
        if ok and args.call and account.states[-1] == 200:
            call = Call(account, self)
            self.call = call
            parameters = pj.CallOpParam(True)
            call.makeCall("sip:%s@%s;transport=%s" % (args.call, args.registrar, args.transport), parameters)
            ok = pump_until(lambda: call.disconnected or (call.confirmed_at and call.media_said))
            if ok and not call.disconnected:
                # Two seconds of the call, its RTP counts said after one, then hang up.
                until = time.monotonic() + 2
                pump_until(lambda: call.say_stats_once() or time.monotonic() > until)
                if args.reinvite:
                    call.reinvite(pj.CallOpParam(True))
                    ok = pump_until(lambda: call.renegotiated or call.disconnected)
                    after = time.monotonic() + 1.5
                    pump_until(lambda: time.monotonic() > after)
                    if not call.disconnected:
                        stat = call.getStreamStat(call.audio_index)
                        say("rtp-after", "rx=%d" % stat.rtcp.rxStat.pkt, "tx=%d" % stat.rtcp.txStat.pkt)
                call.hangup(pj.CallOpParam())
                ok = pump_until(lambda: call.disconnected)
        # No Call may outlive the library: its destructor calls into it.
        self.call = None
        call = None
        account.shutdown()
        endpoint.libHandleEvents(100)
        endpoint.libDestroy()
        say("done" if ok else "timeout")
        return 0 if ok else 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registrar", required=True, help="host:port of Callguard's SIP (or SIP-TLS) listener")
    parser.add_argument("--transport", choices=["tls", "udp"], required=True)
    parser.add_argument("--line", required=True, help="the directory number to register")
    parser.add_argument("--user", help="digest user")
    parser.add_argument("--password", help="digest password")
    parser.add_argument("--cert", help="client certificate (PEM): the phone's LSC")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--ca", help="CA file that must have issued the server's certificate")
    parser.add_argument("--srtp", choices=["disabled", "optional", "mandatory"], default="disabled")
    parser.add_argument("--stale-after", type=float,
                        help="register again, the digest answer held this many seconds on its way")
    parser.add_argument("--answer", action="store_true", help="answer one call, wait for its end")
    parser.add_argument("--call", help="call this line, hang up after a second of media")
    parser.add_argument("--reinvite", action="store_true",
                        help="calling, send a re-INVITE two seconds into the call, then talk on")
    parser.add_argument("--inject-plain-rtp", type=int, metavar="N",
                        help="answering, send N plain RTP packets from this phone's media port")
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("--log", help="file for PJSIP's log")
    return Phone(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
