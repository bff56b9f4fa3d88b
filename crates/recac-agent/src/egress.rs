//! The agent and the egress proxy: what the proxy refused this pod, asked of it at the end
//! of the run, and ssh's way through it.
//!
//! With the operator's egress allow-list on, every connection of the pod goes through the
//! proxy (`RECAC_EGRESS_PROXY`, and the standard proxy variables), which counts the ones it
//! refuses per client address. The agent asks for its own list ([`BLOCKED_PATH`]) once it
//! is done and reports it with its result, so that the task's status and the ticket say what
//! the work could not reach. The request is plain HTTP/1.0 over a socket with short
//! timeouts: the report must never hold the result up, and what fails is only logged.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::Duration;

use recac_api::agent_contract::MAX_BLOCKED_HOSTS;
use recac_api::egress::{BLOCKED_PATH, BlockedHost};

/// How long the proxy gets to answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The most of an answer read.
const MAX_ANSWER_BYTES: u64 = 256 * 1024;
/// The longest head of a `CONNECT` answer.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long the proxy may take to answer a `CONNECT` (it may wait for the pod to be known
/// and for the destination to accept).
const CONNECT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy's list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0:?} is not an http://host:port proxy URL")]
    Url(String),
    #[error("asking the egress proxy {proxy} what it refused: {error}")]
    Io {
        proxy: String,
        error: std::io::Error,
    },
    #[error("the egress proxy {proxy} answered {status:?}")]
    Status { proxy: String, status: String },
    #[error("the egress proxy {proxy} answered something that is not a list of hosts: {error}")]
    Malformed {
        proxy: String,
        error: serde_json::Error,
    },
}

/// ssh's `ProxyCommand` through the egress proxy at `proxy`: `program` (the agent's own
/// binary) run as `egress-connect`, which opens a `CONNECT` tunnel to the host and port ssh
/// names (`%h`, `%p`) and relays it over its standard input and output. Only the program's
/// path and the proxy's URL are in it, each quoted for the shell ssh runs it with.
pub fn ssh_proxy_command(program: &Path, proxy: &str) -> String {
    format!(
        "{} egress-connect --proxy {} %h %p",
        crate::git::shell_quote(&program.display().to_string()),
        crate::git::shell_quote(proxy)
    )
}

/// Opens a `CONNECT` tunnel to `host:port` through the proxy at `proxy`, then relays it to
/// standard input and output until either side ends (ssh's `ProxyCommand`).
pub fn connect_stdio(proxy: &str, host: &str, port: u16) -> Result<(), ReportError> {
    let mut stream = open_tunnel(proxy, host, port)?;
    let io = |error| ReportError::Io {
        proxy: proxy.to_string(),
        error,
    };
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    let mut upstream = stream.try_clone().map_err(io)?;
    let sending = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    // Standard output is line-buffered: each chunk is flushed as it comes, or ssh would wait
    // for bytes held back until a newline.
    let mut stdout = std::io::stdout().lock();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = stream.read(&mut chunk).map_err(io)?;
        if read == 0 {
            break;
        }
        stdout.write_all(&chunk[..read]).map_err(io)?;
        stdout.flush().map_err(io)?;
    }
    drop(sending);
    Ok(())
}

/// A `CONNECT` tunnel to `host:port` through `proxy`, its answer read up to the blank line.
pub fn open_tunnel(proxy: &str, host: &str, port: u16) -> Result<TcpStream, ReportError> {
    let (mut stream, _) = connect_to_proxy(proxy, CONNECT_ANSWER_TIMEOUT)?;
    let io = |error| ReportError::Io {
        proxy: proxy.to_string(),
        error,
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    write!(
        stream,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .map_err(io)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES || stream.read(&mut byte).map_err(io)? == 0 {
            return Err(ReportError::Status {
                proxy: proxy.to_string(),
                status: String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("no answer")
                    .to_string(),
            });
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ReportError::Status {
            proxy: proxy.to_string(),
            status: format!("{status} for {authority}"),
        });
    }
    Ok(stream)
}

/// A connection to the proxy at `proxy` (and its host and port), reads waiting at most
/// `read_timeout`.
fn connect_to_proxy(
    proxy: &str,
    read_timeout: Duration,
) -> Result<(TcpStream, (String, u16)), ReportError> {
    let (host, port) = proxy_address(proxy)?;
    let io = |error| ReportError::Io {
        proxy: proxy.to_string(),
        error,
    };
    let address = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("the host has no address")))?;
    let stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(read_timeout)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    Ok((stream, (host, port)))
}

fn proxy_address(proxy: &str) -> Result<(String, u16), ReportError> {
    let url = url::Url::parse(proxy).map_err(|_| ReportError::Url(proxy.to_string()))?;
    if url.scheme() != "http" {
        return Err(ReportError::Url(proxy.to_string()));
    }
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => Ok((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        )),
        _ => Err(ReportError::Url(proxy.to_string())),
    }
}

/// What the proxy at `proxy` refused this pod, the most refused first, at most
/// [`MAX_BLOCKED_HOSTS`].
pub fn blocked_by_proxy(proxy: &str) -> Result<Vec<BlockedHost>, ReportError> {
    let (mut stream, (host, port)) = connect_to_proxy(proxy, TIMEOUT)?;
    let io = |error| ReportError::Io {
        proxy: proxy.to_string(),
        error,
    };
    write!(
        stream,
        "GET {BLOCKED_PATH} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ReportError::Status {
            proxy: proxy.to_string(),
            status: status.to_string(),
        });
    }
    let mut blocked: Vec<BlockedHost> =
        serde_json::from_str(body).map_err(|error| ReportError::Malformed {
            proxy: proxy.to_string(),
            error,
        })?;
    blocked.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.host.cmp(&b.host)));
    blocked.truncate(MAX_BLOCKED_HOSTS);
    Ok(blocked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        format!("http://{address}")
    }

    #[test]
    fn the_ssh_proxy_command_quotes_the_program_and_the_proxy() {
        let command = ssh_proxy_command(
            Path::new("/usr/local/bin/it's recac"),
            "http://10.0.0.1:3128",
        );
        assert_eq!(
            command,
            "'/usr/local/bin/it'\\''s recac' egress-connect --proxy 'http://10.0.0.1:3128' %h %p"
        );
        let git_ssh = crate::git::ssh_command(None, None, Some(&command));
        assert!(
            git_ssh.ends_with(&format!(
                " -o 'ProxyCommand={}'",
                command.replace('\'', "'\\''")
            )),
            "{git_ssh}"
        );
    }

    #[test]
    fn reads_the_list_most_refused_first() {
        let proxy = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[{\"host\":\"a.example\",\"port\":443,\"count\":1},{\"host\":\"files.example.com\",\"port\":443,\"count\":3}]",
        );
        let blocked = blocked_by_proxy(&proxy).expect("reads");
        assert_eq!(blocked[0].host, "files.example.com");
        assert_eq!(blocked[0].count, 3);
        assert_eq!(blocked.len(), 2);
    }

    #[test]
    fn a_refusal_or_garbage_is_an_error_not_a_list() {
        let proxy = serve_once("HTTP/1.1 404 Not Found\r\n\r\n");
        assert!(matches!(
            blocked_by_proxy(&proxy),
            Err(ReportError::Status { .. })
        ));
        let proxy = serve_once("HTTP/1.1 200 OK\r\n\r\nnot json");
        assert!(matches!(
            blocked_by_proxy(&proxy),
            Err(ReportError::Malformed { .. })
        ));
        assert!(matches!(
            blocked_by_proxy("https://x:1"),
            Err(ReportError::Url(_))
        ));
    }
}
