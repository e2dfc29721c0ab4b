//! A minimal HTTP/1.1 client for the API on one kept-alive connection
//! (hyper's client half): what the integration tests and
//! `biota-dev bench api` speak to a running gateway. Plain HTTP only.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection to the API, opened again when the gateway closed it
/// (its keep-alive limit, an idle timeout).
pub struct Client {
    address: SocketAddr,
    token: Option<String>,
    sender: SendRequest<Full<Bytes>>,
    /// The last answer said `Connection: close`.
    closing: bool,
}

async fn handshake(address: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

impl Client {
    pub async fn connect(address: SocketAddr, token: Option<&str>) -> std::io::Result<Self> {
        Ok(Self {
            address,
            token: token.map(str::to_owned),
            sender: handshake(address).await?,
            closing: false,
        })
    }

    /// The connection, opened again if the gateway closed the last one.
    async fn sender(&mut self) -> std::io::Result<&mut SendRequest<Full<Bytes>>> {
        if self.closing || self.sender.is_closed() {
            self.sender = handshake(self.address).await?;
            self.closing = false;
        }
        self.sender.ready().await.map_err(std::io::Error::other)?;
        Ok(&mut self.sender)
    }

    /// Sends a GET and counts the answer's bytes without keeping them (a
    /// load generator in the gateway's process must not hold answers).
    pub async fn get_counting(&mut self, path: &str) -> std::io::Result<(StatusCode, u64)> {
        let request = self.build(Method::GET, path, &[], None)?;
        let response = self.send(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                bytes += data.len() as u64;
            }
        }
        Ok((status, bytes))
    }

    /// Sends `request` on the kept connection (opening one if needed) and
    /// notes whether the server closes it after this answer.
    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> std::io::Result<hyper::Response<hyper::body::Incoming>> {
        let response = self
            .sender()
            .await?
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        self.closing = closes(response.headers());
        Ok(response)
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> std::io::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.address.to_string());
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(std::io::Error::other)
    }

    /// Sends a request; `headers` are extra (name, value) pairs.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> std::io::Result<Answer> {
        let request = self.build(method, path, headers, body)?;
        let response = self.send(request).await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        self.request(Method::GET, path, &[], None).await
    }

    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> std::io::Result<Answer> {
        self.request(Method::POST, path, &[], Some(body.to_string().into_bytes()))
            .await
    }

    /// Opens `/v1/stream...` and returns the response's body as a stream of
    /// chunks (the connection is used up by it).
    pub async fn stream(
        mut self,
        path: &str,
    ) -> std::io::Result<(StatusCode, hyper::body::Incoming)> {
        let mut request = Request::builder()
            .uri(path)
            .header(header::HOST, self.address.to_string());
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(std::io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status();
        Ok((status, response.into_body()))
    }
}

/// Whether an answer closes its connection.
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}
