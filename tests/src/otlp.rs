//! A real OTLP/HTTP logs receiver for the tests: it decodes each `POST /v1/logs` body as
//! OpenTelemetry's `ExportLogsServiceRequest` (the protobuf types generated from the
//! OpenTelemetry definitions) and keeps every log record. It refuses requests (with the status
//! the test chose) unless allowed to take them, so a test decides exactly which batches get
//! through.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{KeyValue, any_value::Value},
    logs::v1::LogRecord,
};
use prost::Message as _;

/// A log record and its resource's attributes.
#[derive(Clone, Debug)]
pub struct Received {
    pub record: LogRecord,
    pub resource: Vec<KeyValue>,
}

#[derive(Default)]
struct State {
    records: Vec<Received>,
    accepted_requests: u64,
    refused_requests: u64,
    /// Requests still to be accepted; `None`: all.
    allowance: Option<u64>,
    /// How refused requests are answered: 503 (with `Retry-After: 1`) or e.g. 401.
    refusal: u16,
}

pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT` (the controller adds `/v1/logs`).
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts refusing every request with `refusal` (503 comes with `Retry-After: 1`) until
    /// [`OtlpReceiver::allow`]; stops when dropped, or on its own after five minutes.
    pub fn start(refusal: u16) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            allowance: Some(0),
            refusal,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, stopping) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300)
            {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                serve(stream, &serving);
            }
        });
        OtlpReceiver {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Accepts the next `requests` requests (`None`: all from now on), then refuses again.
    pub fn allow(&self, requests: Option<u64>) {
        self.state.lock().unwrap().allowance = requests;
    }

    pub fn records(&self) -> Vec<Received> {
        self.state.lock().unwrap().records.clone()
    }

    /// (accepted, refused) requests.
    pub fn requests(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap();
        (state.accepted_requests, state.refused_requests)
    }

    /// Waits (bounded) until `done` holds of the records received.
    pub fn wait(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver has {} records, requests (accepted, refused) {:?}",
                records.len(),
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request on one connection (answered with `Connection: close`).
fn serve(stream: std::net::TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut request_line, mut length, mut protobuf) = (String::new(), 0usize, false);
    for line in (&mut reader).lines().map_while(Result::ok) {
        if request_line.is_empty() {
            request_line = line.clone();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if let Some(value) = lower.strip_prefix("content-type:") {
            protobuf = value.trim() == "application/x-protobuf";
        }
        if line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = |status: &str, extra: &str, body: &[u8]| {
        let mut stream = &stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    };
    if !request_line.starts_with("POST /v1/logs ") || !protobuf {
        answer("400 Bad Request", "", b"");
        return;
    }
    let mut state = state.lock().unwrap();
    if state.allowance == Some(0) {
        state.refused_requests += 1;
        match state.refusal {
            503 => answer("503 Service Unavailable", "Retry-After: 1\r\n", b""),
            status => answer(&format!("{status} Refused"), "", b""),
        }
        return;
    }
    let Ok(request) = ExportLogsServiceRequest::decode(body.as_slice()) else {
        answer("400 Bad Request", "", b"");
        return;
    };
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        for scope in resource_logs.scope_logs {
            for record in scope.log_records {
                state.records.push(Received {
                    record,
                    resource: resource.clone(),
                });
            }
        }
    }
    state.accepted_requests += 1;
    if let Some(left) = &mut state.allowance {
        *left -= 1;
    }
    answer(
        "200 OK",
        "",
        &ExportLogsServiceResponse::default().encode_to_vec(),
    );
}

/// An attribute's value as text (strings as they are, integers in decimal).
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}
