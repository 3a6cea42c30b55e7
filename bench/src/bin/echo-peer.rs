//! `echo-peer`: the baseline the benchmark compares herd-server with. A plain
//! tokio-tungstenite WebSocket server with the default configuration, one task per
//! connection, echoing every text and binary message back. It does no work beyond
//! that, so whatever herd-server costs on top of it is the cost of being a device cloud.
//!
//! `echo-peer --listen 127.0.0.1:0` prints `listening <address>` once it accepts.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Bare tokio-tungstenite echo server, the benchmark's baseline peer")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: keep serving the connections already open.
                eprintln!("accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // A connection's end, orderly or reset, is not news for a baseline peer; printing
        // it for thousands of sockets would only cost time.
        tokio::spawn(async move {
            let _ = serve(stream).await;
        });
    }
}

async fn serve(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut socket = tokio_tungstenite::accept_async(stream).await?;
    while let Some(message) = socket.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            socket.send(message).await?;
        }
    }
    Ok(())
}
