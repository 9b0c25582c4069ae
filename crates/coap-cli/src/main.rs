//! `gateway coap` (`gateway-coap`): a CoAP-over-DTLS client for people. GET, POST, PUT and
//! DELETE a URI, observe it (RFC 7641), or list a server's resources (`discover`), with the
//! uplink's DTLS options;
//! a large answer is fetched block by block (RFC 7959 Block2); SenML is shown as a table.
//! Exit codes a script can use: 0 for 2.xx, 4 for 4.xx, 5 for 5.xx, 3 when no answer came (or
//! the server reset the request), 2 when the DTLS handshake failed, 6 when observe was answered
//! without a registration, 1 for anything else (bad arguments, files).
//!
//! It does I/O: a UDP socket, the files its options name, stdin for `--payload-file -`.

mod show;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use gateway_coap::{
    coap_lite::{CoapOption, MessageClass, Packet, RequestType},
    Block, Code, ContentFormat, Uri,
};
use gateway_coaps_tokio::{Client, ClientOptions, Notice};
use gateway_dtls::{
    checked_key,
    client::{Config as ClientConfig, RequestError},
    text_key, ClientSettings, Psk,
};
use gateway_sdk::trust::Owners;
use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

#[derive(Parser)]
#[command(
    name = "gateway coap",
    version,
    about = "A CoAP-over-DTLS client: GET, POST, PUT, DELETE, observe, discover",
    after_help = "Exit codes: 0 for a 2.xx answer, 4 for 4.xx, 5 for 5.xx, 3 when no answer came in time (or an observation's session was lost, or the server reset the request), 2 when the DTLS handshake failed, 6 when observe was answered without registering, 1 for anything else (bad arguments, files that cannot be read, an answer CoAP does not allow).\n\nExamples:\n  gateway coap get coaps://gw.example/.well-known/core --ca certs/ca.pem\n  gateway coap observe coaps://gw.example/gpsflowtemp/pi-01/ds18b20 --ca certs/ca.pem --cert certs/dash.pem --key certs/dash.key --count 10\n  gateway coap post coaps://gw.example/gpsflowtemp --ca certs/ca.pem --cert certs/pi-01.pem --key certs/pi-01.key -t senml+json -f readings.json"
)]
struct Args {
    /// What to do.
    method: Method,
    /// The resource: `coaps://HOST[:PORT]/PATH[?QUERY]` (port 5684 if not given).
    uri: String,
    /// CA file (PEM) the server's certificate must lead to; the URI's host is checked against
    /// the certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// CRLs (PEM) of --ca's CA: a server certificate they revoke is refused.
    #[arg(long, value_name = "FILE", requires = "ca")]
    crl: Option<PathBuf>,
    /// This client's certificate (PEM), for servers that authenticate devices.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// A PSK identity instead of certificates; the key comes from --psk-key-file or
    /// --psk-key-env (hex), never from the command line.
    #[arg(long, value_name = "ID")]
    psk_identity: Option<String>,
    /// A file whose first line is the PSK in hex.
    #[arg(long, value_name = "FILE", requires = "psk_identity")]
    psk_key_file: Option<PathBuf>,
    /// An environment variable holding the PSK in hex.
    #[arg(long, value_name = "VAR", requires = "psk_identity")]
    psk_key_env: Option<String>,
    /// OpenSSL cipher list (default: ECDHE-ECDSA/RSA with AES-GCM or ChaCha20-Poly1305, then
    /// ECDHE-ECDSA-AES128-CCM8; with a PSK, ECDHE-PSK with ChaCha20-Poly1305 or AES-CBC:
    /// forward secrecy either way).
    #[arg(long, value_name = "LIST")]
    ciphers: Option<String>,
    /// The payload's Content-Format, by name (text, json, cbor, senml+json, senml+cbor,
    /// link-format, octet-stream) or number.
    #[arg(short = 't', long, value_name = "FORMAT")]
    content_format: Option<String>,
    /// The Content-Format wanted in the answer (Accept), by name or number.
    #[arg(short = 'A', long, value_name = "FORMAT")]
    accept: Option<String>,
    /// The payload, as text.
    #[arg(
        short = 'p',
        long,
        value_name = "TEXT",
        conflicts_with = "payload_file"
    )]
    payload: Option<String>,
    /// The payload from a file; `-` reads stdin.
    #[arg(short = 'f', long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// The block size, 16 to 1024: asked for in a block-wise answer, and used for a payload
    /// that goes up block-wise (larger than it).
    #[arg(short = 'b', long, value_name = "BYTES", default_value_t = 1024)]
    block_size: u32,
    /// How long to wait for each answer (a handshake included).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = gateway_sdk::config::duration::parse)]
    timeout: Duration,
    /// The payload as it came (no SenML table, no line per link).
    #[arg(long)]
    raw: bool,
    /// observe: stop after this many notifications.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// observe: stop after this long (default: until Ctrl-C or the server ends it).
    #[arg(long = "for", value_name = "DURATION", value_parser = gateway_sdk::config::duration::parse)]
    r#for: Option<Duration>,
    /// Show the DTLS session (version, cipher, the server's certificate) and each request and
    /// answer (type, code, MID, token, options) on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
    /// GET /.well-known/core: the server's resources (RFC 6690).
    Discover,
    /// GET with Observe (RFC 7641): the answer, then each notification as it comes.
    Observe,
}

fn main() -> ExitCode {
    // A usage error is "anything else" (1), not clap's 2, which here says the handshake failed.
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    warnings_to_stderr(args.verbose);
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            // A request error's own text says it all; its source would repeat it.
            // What a server or its certificate said can be part of it.
            let text = if e.downcast_ref::<RequestError>().is_some() {
                e.to_string()
            } else {
                format!("{e:#}")
            };
            eprintln!("error: {}", gateway_sdk::text::printable(&text));
            ExitCode::from(exit_for(&e))
        }
    }
}

/// Shows the warnings of the libraries under the tool on stderr, one line each: a CA or a
/// device certificate that expired or is not valid yet (the handshake fails then, and the
/// warning says why), a server name that cannot be looked up again. The DTLS client's
/// "session ended", which says why, with `-v` only: the tool says what it means for the
/// request itself.
fn warnings_to_stderr(verbose: bool) {
    use tracing_subscriber::{filter::filter_fn, prelude::*};
    /// Writes each event (one line) with what a terminal would act on escaped.
    struct OneLine;
    impl std::io::Write for OneLine {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8_lossy(buf);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let line = format!("{}\n", gateway_sdk::text::one_line(text));
            std::io::stderr().write_all(line.as_bytes())?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            std::io::stderr().flush()
        }
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| OneLine)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_filter(filter_fn(move |m| {
            *m.level() <= tracing::Level::WARN && (verbose || m.target() != "gateway_dtls::client")
        }));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The exit code of a failure: 2 for DTLS (a failed handshake; a server that refuses a device
/// may also complete it and close the session at once), 3 for no answer (a timeout or a
/// reset), 1 otherwise (a request that cannot be encoded, an answer CoAP does not allow).
fn exit_for(e: &anyhow::Error) -> u8 {
    use gateway_coap::ClientError;
    match e.downcast_ref::<RequestError>() {
        Some(RequestError::Dtls(_)) => 2,
        Some(
            RequestError::Timeout(_)
            | RequestError::Coap(ClientError::Timeout | ClientError::Reset),
        ) => 3,
        _ => 1,
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut uri = Uri::parse(&args.uri).map_err(anyhow::Error::msg)?;
    if args.method == Method::Discover {
        uri.path = vec![".well-known".into(), "core".into()];
    }
    let szx = (0..=6u8)
        .find(|s| 16u32 << s == args.block_size)
        .with_context(|| {
            format!(
                "--block-size {}: give 16, 32, 64, 128, 256, 512 or 1024",
                args.block_size
            )
        })?;
    if args.method != Method::Observe && (args.count.is_some() || args.r#for.is_some()) {
        bail!("--count and --for are for observe: a single request ends with its answer");
    }
    if args.timeout.is_zero() {
        bail!("--timeout 0s: no answer could come in time; give how long to wait for each (10s by default)");
    }
    let payload = payload(args)?;
    let content_format = args
        .content_format
        .as_deref()
        .map(show::content_format)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let accept = args
        .accept
        .as_deref()
        .map(show::content_format)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let server = resolve(&uri)?;
    let tls = settings(args)?;
    if tls.ca_file.is_some() && tls.psk.is_some() {
        bail!("give --ca or --psk-identity, not both: a PSK handshake shows no certificate, so --ca would check nothing");
    }
    if tls.ca_file.is_none() && tls.psk.is_none() {
        bail!("give --ca (the server's certificate is checked against it) or --psk-identity");
    }
    let opts = ClientOptions {
        server,
        resolve: None,
        bind: if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?,
        client: ClientConfig {
            host: uri.host.clone(),
            verify_host: tls.ca_file.is_some(),
            tls,
            // -b is the block size both ways: a payload larger than it goes up block-wise
            // (Block1) in blocks of that size, as libcoap's coap-client does.
            coap: gateway_coap::Config {
                block_szx: szx,
                max_payload: gateway_coap::Config::default().max_payload.min(16 << szx),
                ..Default::default()
            },
            handshake_timeout: args.timeout,
        },
    };
    // Files and settings that cannot be used: no handshake was tried (exit 1, not 2).
    let client = Client::start(opts).map_err(anyhow::Error::new)?;
    let method = match args.method {
        Method::Get | Method::Discover | Method::Observe => RequestType::Get,
        Method::Post => RequestType::Post,
        Method::Put => RequestType::Put,
        Method::Delete => RequestType::Delete,
    };
    let build = |block2: Option<Block>| {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        for seg in &uri.path {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in &uri.query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(cf) = content_format {
            cf.set(&mut p);
        }
        if let Some(a) = accept {
            p.add_option(
                CoapOption::Accept,
                gateway_coap::encode_uint(u32::from(a.0)),
            );
        }
        if let Some(b) = block2 {
            p.add_option(CoapOption::Block2, b.encode());
        }
        if block2.is_none_or(|b| b.num == 0) {
            p.payload = payload.clone();
        }
        p
    };
    if args.method == Method::Observe {
        return observe(args, &client, &build, szx);
    }
    let (answer, body) = transfer(args, &client, &build, method, szx)?;
    let code = print(args, &answer, &body)?;
    drop(client);
    Ok(ExitCode::from(code))
}

/// Sends what `build` makes and, when the answer comes block by block, fetches every block
/// (by byte offset, checking the ETag between blocks). Gives the last answer and the whole
/// body. `szx`: the block size to ask for.
fn transfer(
    args: &Args,
    client: &Client,
    build: &dyn Fn(Option<Block>) -> Packet,
    method: RequestType,
    szx: u8,
) -> anyhow::Result<(Packet, Vec<u8>)> {
    let mut blocks = 0u32;
    // The ETag and Content-Format of the first block, and how often a change of them made the
    // transfer start again.
    let mut etag: Option<(Option<Vec<u8>>, Option<Vec<u8>>)> = None;
    let mut restarts = 0;
    let mut body = Vec::new();
    // Asking for smaller blocks than the usual 1024 bytes starts with the first one (RFC 7959
    // 2.4, early negotiation).
    let mut next: Option<Block> = (method == RequestType::Get && szx < 6).then_some(Block {
        num: 0,
        more: false,
        szx,
    });
    let answer = loop {
        // A server chooses the block size: at 16 bytes a block, the 64 MiB cap alone would
        // be four million exchanges. And Ctrl-C (or observe's --for) ends a transfer too.
        blocks += 1;
        if blocks > MAX_BLOCKS {
            bail!("the answer took over {MAX_BLOCKS} blocks; stopped fetching it");
        }
        if stopping() {
            return Err(Stopped.into());
        }
        let request = build(next);
        if args.verbose {
            eprintln!("> {}", show::request(&request));
        }
        let outcome = client.request(request, args.timeout);
        show_session(args, client);
        let response = outcome.map_err(anyhow::Error::new)?;
        if args.verbose {
            eprintln!("< {}", show::message(&response));
        }
        let success = Code::of(&response).is_some_and(|c| c.is_success());
        if !success {
            // An error ends the transfer; the blocks before it are not the answer.
            body = response.payload.clone();
            break response;
        }
        let block = match response.get_first_option(CoapOption::Block2) {
            None => None,
            Some(v) => Some(Block::decode(v).ok_or_else(|| {
                anyhow::anyhow!(
                    "the server's Block2 option cannot be read ({} bytes, {v:02x?})",
                    v.len()
                )
            })?),
        };
        // Part of the body came block by block: the rest must too, or what is printed would
        // be blocks of one answer and some other answer run together.
        if block.is_none() && blocks > 1 && !body.is_empty() {
            bail!(
                "the server answered the request for the block at byte {} without a Block2 option; stopped: the body would not be the resource's",
                body.len()
            );
        }
        if let Some(b) = block {
            // Each block says where it starts; sizes may change between blocks (RFC 7959 2.4).
            let offset = b.num as usize * b.size();
            if offset != body.len() {
                bail!(
                    "the server answered with the block at byte {offset} when the one at byte {} was asked for",
                    body.len()
                );
            }
            // The representation changed between blocks: start again, a few times at most.
            // Without an ETag, a change of Content-Format between blocks says so too.
            let tag = (
                response.get_first_option(CoapOption::ETag).cloned(),
                response
                    .get_first_option(CoapOption::ContentFormat)
                    .cloned(),
            );
            if b.num > 0 && Some(&tag) != etag.as_ref() {
                // Starting again sends the request whole once more: only a GET may be.
                if method != RequestType::Get {
                    bail!(
                        "the answer changed between its blocks (another ETag or Content-Format); the request is not sent again, since the server may have acted on it already"
                    );
                }
                restarts += 1;
                if restarts > 3 {
                    bail!("the resource kept changing while its blocks were fetched");
                }
                body.clear();
                next = next.map(|n| Block { num: 0, ..n });
                etag = None;
                continue;
            }
            etag = Some(tag);
            if b.more && response.payload.is_empty() {
                bail!(
                    "the server sent an empty block {} and said more follow",
                    b.num
                );
            }
            // Every block but the last is exactly the block size (RFC 7959 2.2).
            if b.more && response.payload.len() != b.size() {
                bail!(
                    "the server sent block {} of {} bytes and said more follow; a block is {} bytes but the last",
                    b.num,
                    response.payload.len(),
                    b.size()
                );
            }
        }
        body.extend_from_slice(&response.payload);
        match block {
            Some(b) if b.more => {
                if body.len() > 64 << 20 {
                    bail!("the answer is over 64 MiB; stopped fetching it");
                }
                // The smaller of the server's size and ours, numbered from where the next
                // block starts.
                let size_exp = b.szx.min(szx);
                let size = 16usize << size_exp;
                next = Some(Block {
                    num: (body.len() / size) as u32,
                    more: false,
                    szx: size_exp,
                });
            }
            _ => break response,
        }
    };
    Ok((answer, body))
}

/// The most blocks one answer may take (64 MiB in blocks of 1 KiB).
const MAX_BLOCKS: u32 = 65_536;

/// Set by Ctrl-C (SIGINT) or SIGTERM once `observe` catches them, or when its `--for` passed.
fn stop_flag() -> &'static std::sync::Arc<std::sync::atomic::AtomicBool> {
    static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    STOP.get_or_init(Default::default)
}

fn stopping() -> bool {
    stop_flag().load(std::sync::atomic::Ordering::Relaxed)
}

/// With `-v`, the DTLS session, once.
fn show_session(args: &Args, client: &Client) {
    static SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !args.verbose || SHOWN.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Some(s) = client.figures().and_then(|f| f.session) {
        SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "* {} {}{}, server certificate: {}",
            s.version,
            s.cipher,
            if s.resumed { " (resumed)" } else { "" },
            s.peer.as_deref().unwrap_or("none (PSK)")
        );
    }
}

/// Prints an answer's body (2.xx: to stdout, as a table or links unless `--raw`; otherwise its
/// code and diagnostic to stderr) and gives the exit code of its class.
fn print(args: &Args, answer: &Packet, body: &[u8]) -> anyhow::Result<u8> {
    let code = Code::of(answer).context("the answer has no response code")?;
    let mut out = std::io::stdout().lock();
    if code.is_success() {
        if args.raw {
            out.write_all(body)?;
        } else {
            let format = ContentFormat::of(answer).ok().flatten();
            out.write_all(show::payload(body, format).as_bytes())?;
        }
    } else {
        let why = String::from_utf8_lossy(body);
        eprintln!("{code} {}", gateway_sdk::text::one_line(why.trim_end()));
    }
    out.flush()?;
    Ok(match code.class {
        2 => 0,
        4 => 4,
        5 => 5,
        _ => 1,
    })
}

/// `observe`: registers (a GET with `Observe: 0`) and prints the answer and then each
/// notification, until `--count` of them came, `--for` passed, Ctrl-C, or the server ended the
/// observation. A notification larger than a block is fetched whole with GETs.
fn observe(
    args: &Args,
    client: &Client,
    build: &dyn Fn(Option<Block>) -> Packet,
    szx: u8,
) -> anyhow::Result<ExitCode> {
    let stop = stop_flag().clone();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second one ends the process at once, whatever it is waiting for.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("cannot catch Ctrl-C")?;
        signal_hook::flag::register(sig, stop.clone()).context("cannot catch Ctrl-C")?;
    }
    if let Some(d) = args.r#for {
        // --for is a stop like Ctrl-C: a state being fetched block by block stops too.
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let request = build(None);
    if args.verbose {
        eprintln!("> {} Observe: 0", show::request(&request));
    }
    let (answer, observation) = client
        .observe(request, args.timeout)
        .map_err(anyhow::Error::new)?;
    show_session(args, client);
    // Each state, whole: a large one comes as its first block.
    let whole = |p: Packet| -> anyhow::Result<(Packet, Vec<u8>)> {
        if args.verbose {
            eprintln!("< {}", show::message(&p));
        }
        match show::block2(&p) {
            Some(b) if b.more => transfer(args, client, build, RequestType::Get, szx.min(b.szx)),
            _ => {
                let body = p.payload.clone();
                Ok((p, body))
            }
        }
    };
    // The exit code once --count, --for or Ctrl-C ends the observation: 0, or that of the
    // last state that could not be shown (a block of it answered with an error).
    let mut failed = 0;
    let (first, body) = match whole(answer) {
        // Ctrl-C or --for while the first state was fetched block by block.
        Err(e) if e.is::<Stopped>() => return Ok(ExitCode::SUCCESS),
        r => r?,
    };
    let code = print(args, &first, &body)?;
    let Some(observation) = observation else {
        if code == 0 {
            eprintln!("the server answered without registering this client (no Observe option)");
            return Ok(ExitCode::from(6));
        }
        return Ok(ExitCode::from(code));
    };
    if code != 0 {
        failed = code;
    }
    let mut seen = 0u64;
    // RFC 7641 §3.3.1: once the last state's Max-Age passed without a notification, the
    // server (or the path to it) may have lost the observation without a word: a NAT mapping
    // gone, a server restarted. A GET then shows whether it still answers on this session.
    let mut fresh_until = std::time::Instant::now() + max_age(&first);
    let code = loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) || args.count.is_some_and(|n| seen >= n)
        {
            observation.stop();
            break failed;
        }
        if std::time::Instant::now() > fresh_until + LIVENESS_MARGIN {
            // A plain GET, not a new registration: that would take a token of its own, and
            // the old one would stay registered on the server until its next notification
            // (a server keeps a few per client).
            let check = build(None);
            if args.verbose {
                eprintln!(
                    "> {} (no notification within Max-Age: is the server there?)",
                    show::request(&check)
                );
            }
            match client.request(check, args.timeout) {
                Ok(p) => {
                    if args.verbose {
                        eprintln!("< {}", show::message(&p));
                    }
                    // An error (4.04: the resource is gone) ends the observation with its
                    // code: no notification will come.
                    if !Code::of(&p).is_some_and(|c| c.is_success()) {
                        let code = print(args, &p, &p.payload)?;
                        eprintln!("the observation is lost: no notification within its Max-Age, and the server answered a GET with an error");
                        observation.stop();
                        break code;
                    }
                    fresh_until = std::time::Instant::now() + max_age(&p);
                }
                Err(e) => {
                    // As any request's failure: 3 for no answer, 2 for a handshake refused
                    // (a certificate revoked meanwhile).
                    let e = anyhow::Error::new(e);
                    eprintln!(
                        "the observation is lost: no notification within its Max-Age, and the server did not answer a GET ({})",
                        gateway_sdk::text::one_line(&e.to_string())
                    );
                    observation.stop();
                    break exit_for(&e);
                }
            }
        }
        match observation.next(Duration::from_millis(200)) {
            None => continue,
            Some(Notice::Ended) => {
                eprintln!("the observation ended: the DTLS session was lost");
                break 3;
            }
            Some(Notice::Notification(p)) => {
                seen += 1;
                // One without Observe, or an error, is the server's last.
                let last = gateway_coap::observe_of(&p).is_none()
                    || !Code::of(&p).is_some_and(|c| c.is_success());
                let (p, body) = match whole(p) {
                    // Ctrl-C or --for while a block-wise notification was fetched.
                    Err(e) if e.is::<Stopped>() => {
                        observation.stop();
                        break failed;
                    }
                    r => r?,
                };
                // A notification whose blocks were answered with an error was not shown.
                let code = print(args, &p, &body)?;
                if code != 0 {
                    failed = code;
                }
                fresh_until = std::time::Instant::now() + max_age(&p);
                if last {
                    eprintln!("the server ended the observation");
                    break code;
                }
            }
        }
    };
    Ok(ExitCode::from(code))
}

/// Ctrl-C, or observe's `--for`, ended a transfer: not a failure of the server's.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

/// How long past a state's Max-Age `observe` waits for a notification before it asks the
/// server whether it is still there.
const LIVENESS_MARGIN: Duration = Duration::from_secs(5);

/// A state's Max-Age (RFC 7252 §5.10.5: 60 s when not given).
fn max_age(p: &Packet) -> Duration {
    let secs = p
        .get_first_option(CoapOption::MaxAge)
        .and_then(|v| gateway_coap::decode_uint(v))
        .unwrap_or(60);
    Duration::from_secs(secs.into())
}

/// The server's address: the first the URI's host resolves to.
fn resolve(uri: &Uri) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    (uri.host.as_str(), uri.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", uri.host))?
        .next()
        .with_context(|| format!("{} resolves to no address", uri.host))
}

/// The request's payload: --payload, --payload-file (`-`: stdin), or none.
fn payload(args: &Args) -> anyhow::Result<Vec<u8>> {
    if let Some(p) = &args.payload {
        return Ok(p.as_bytes().to_vec());
    }
    match &args.payload_file {
        None => Ok(Vec::new()),
        Some(f) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Ok(buf)
        }
        Some(f) => std::fs::read(f).with_context(|| format!("cannot read {}", f.display())),
    }
}

/// The DTLS settings from the options.
fn settings(args: &Args) -> anyhow::Result<ClientSettings> {
    let psk = match &args.psk_identity {
        None => None,
        Some(id) => {
            let hex = match (&args.psk_key_file, &args.psk_key_env) {
                // As the uplink reads its key file: one that others may change (and put a
                // key they know in) or read is refused. Root may use the service's key.
                (Some(f), None) => gateway_sdk::trust::read_private(f, Owners::Operator)
                    .map_err(|e| anyhow::anyhow!("--psk-key-file {e}"))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
                // Not `env::var`'s error: it quotes a value that is not UTF-8, the key.
                (None, Some(var)) => match std::env::var_os(var) {
                    None => bail!("the environment variable {var} is not set"),
                    Some(v) => v.into_string().map_err(|_| {
                        anyhow::anyhow!(
                            "the environment variable {var} is not text: it holds the key in hex"
                        )
                    })?,
                },
                _ => bail!(
                    "--psk-identity takes its key from one of --psk-key-file and --psk-key-env"
                ),
            };
            // As the uplink takes keys: one anyone could guess, or find offline from the
            // handshake of whoever answers, is not used.
            let key = checked_key(&hex).map_err(|e| anyhow::anyhow!("the PSK: {e}"))?;
            if text_key(&key) {
                eprintln!("warning: the PSK's bytes are all printable text (a passphrase in hex?): a text key is as strong as the text is hard to guess, not as long as it is");
            }
            Some(Psk {
                identity: id.clone(),
                key,
            })
        }
    };
    // As the uplink takes its CA and CRL files: whoever can add a certificate to them (or
    // take a revocation out) can pose as the server.
    for (option, file) in [("--ca", &args.ca), ("--crl", &args.crl)] {
        if let Some(file) = file {
            gateway_sdk::trust::operator_may_trust(file)
                .map_err(|e| anyhow::anyhow!("{option} {e}"))?;
        }
    }
    if let Some(key) = &args.key {
        // The device's private key, held to what the uplink holds its key_file to.
        let meta =
            std::fs::metadata(key).with_context(|| format!("cannot read {}", key.display()))?;
        gateway_sdk::trust::private(key, &meta, None, Owners::Operator)
            .map_err(|e| anyhow::anyhow!("--key {e}"))?;
    }
    Ok(ClientSettings {
        ca_file: args.ca.clone(),
        crl_file: args.crl.clone(),
        cert: args.cert.clone().zip(args.key.clone()),
        psk,
        ciphers: args.ciphers.clone().unwrap_or_default(),
        mtu: 1232,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `get` of the tool with the options `more`.
    fn get(more: &[&str]) -> Args {
        let base = ["gateway-coap", "get", "coaps://127.0.0.1/x"];
        Args::try_parse_from(base.iter().chain(more)).unwrap()
    }

    /// Found in a review: the tool took any key (`--psk-key-env` with `01`), which whoever
    /// answers the handshake finds offline; and quoted a key that is not text in its error.
    #[test]
    fn a_psk_the_uplink_would_refuse_is_refused() {
        let with_key = |var: &str, key: &std::ffi::OsStr| {
            std::env::set_var(var, key);
            let args = get(&["--psk-identity", "pi-01", "--psk-key-env", var]);
            settings(&args).map(|s| s.psk.unwrap().key)
        };
        let err = |var: &str, key: &str| format!("{:#}", with_key(var, key.as_ref()).unwrap_err());
        assert!(err("GW_CLI_K1", "01").contains("at least 16"));
        assert!(err("GW_CLI_K2", "000102030405060708090a0b0c0d0e0f").contains("fixed step"));
        assert!(err("GW_CLI_K3", "x1").contains("hex digits"));
        let good = "5f1c9e07a2d84b36e0917c5a3bf24d68";
        assert_eq!(with_key("GW_CLI_K4", good.as_ref()).unwrap().len(), 16);
        use std::os::unix::ffi::OsStrExt;
        let binary = std::ffi::OsStr::from_bytes(b"\xff\xfesecret-bytes");
        let e = format!("{:#}", with_key("GW_CLI_K5", binary).unwrap_err());
        assert!(e.contains("is not text") && !e.contains("secret"), "{e}");
    }

    /// Found in a review: the tool read --psk-key-file and --key whatever their modes, where
    /// the uplink refuses a key file others may change (and put a key they know in) or read.
    #[test]
    fn a_key_file_others_may_change_or_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pi-01.psk");
        std::fs::write(&file, "5f1c9e07a2d84b36e0917c5a3bf24d68\n").unwrap();
        let with_mode = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let args = get(&[
                "--psk-identity",
                "pi-01",
                "--psk-key-file",
                file.to_str().unwrap(),
            ]);
            settings(&args).map(|s| s.psk.unwrap().key.len())
        };
        assert_eq!(with_mode(0o600).unwrap(), 16);
        assert!(format!("{:#}", with_mode(0o664).unwrap_err()).contains("changed by others"));
        assert!(format!("{:#}", with_mode(0o604).unwrap_err()).contains("every local user"));
        let key = dir.path().join("device.key");
        std::fs::write(&key, "not read here").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = get(&[
            "--ca",
            "ca.pem",
            "--cert",
            "device.pem",
            "--key",
            key.to_str().unwrap(),
        ]);
        let e = format!("{:#}", settings(&args).unwrap_err());
        assert!(
            e.starts_with("--key") && e.contains("every local user"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(settings(&args).is_ok());
        // A CA file every user may change: whoever can add a CA to it can pose as the server.
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not read here").unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o666)).unwrap();
        let ca_args = get(&["--ca", ca.to_str().unwrap()]);
        let e = format!("{:#}", settings(&ca_args).unwrap_err());
        assert!(
            e.starts_with("--ca") && e.contains("every user may change"),
            "{e}"
        );
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(settings(&ca_args).is_ok());
        // Found in a review: root's run on the service's key (in the service's directory)
        // is taken, another user's file in a directory not theirs is not (it may have put a
        // key it knows in /tmp). Only root can make files of other users.
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            let e = format!("{:#}", with_mode(0o600).unwrap_err());
            assert!(e.contains("neither this user, root nor the owner"), "{e}");
            std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
            assert_eq!(with_mode(0o600).unwrap(), 16);
        }
    }

    #[test]
    fn exit_codes_say_what_failed() {
        use gateway_coap::ClientError;
        use gateway_dtls::DtlsError;
        let code = |e: RequestError| exit_for(&anyhow::Error::new(e));
        assert_eq!(
            code(RequestError::Dtls(DtlsError::Handshake("alert".into()))),
            2
        );
        assert_eq!(
            code(RequestError::Dtls(DtlsError::HandshakeTimeout(
                Duration::ZERO
            ))),
            2
        );
        // How the ingress refuses a device without a certificate.
        assert_eq!(code(RequestError::Dtls(DtlsError::Closed)), 2);
        assert_eq!(code(RequestError::Timeout(Duration::ZERO)), 3);
        assert_eq!(code(RequestError::Coap(ClientError::Reset)), 3);
        assert_eq!(code(RequestError::Coap(ClientError::Timeout)), 3);
        // Neither is "no answer": one was never sent, the other was an answer.
        assert_eq!(
            code(RequestError::Coap(ClientError::Encode("too long".into()))),
            1
        );
        assert_eq!(
            code(RequestError::Coap(ClientError::Protocol(
                "2.31 as final".into()
            ))),
            1
        );
        assert_eq!(exit_for(&anyhow::anyhow!("no such file")), 1);
    }
}
