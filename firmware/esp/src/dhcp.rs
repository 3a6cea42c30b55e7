//! A small DHCP server for the provisioning access point, so a phone or laptop that
//! joins it gets an address: one address per client hardware address, from
//! 192.168.4.2 on, DISCOVER answered with OFFER and REQUEST with ACK.

use alloc::vec;
use alloc::vec::Vec;

use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Ipv4Address, Stack};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIRST_HOST: u8 = 2;
const MAX_LEASES: usize = 16;

/// Serves DHCP on `stack` as `server` until the device restarts.
#[embassy_executor::task]
pub async fn server_task(stack: Stack<'static>, server: Ipv4Address) -> ! {
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx = vec![0u8; 1024];
    let mut tx = vec![0u8; 1024];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    if let Err(e) = socket.bind(67) {
        log::error!("DHCP server cannot bind: {e:?}");
    }
    let mut leases = Vec::new();
    let mut buffer = vec![0u8; 600];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(reply) = answer(&buffer[..n], server.octets(), &mut leases) {
            let _ = socket.send_to(&reply, (Ipv4Address::BROADCAST, 68)).await;
        }
    }
}

/// The reply to one DHCP message, if it calls for one.
pub fn answer(request: &[u8], server: [u8; 4], leases: &mut Vec<[u8; 6]>) -> Option<Vec<u8>> {
    if request.len() < 240 || request[0] != 1 || request[236..240] != MAGIC {
        return None;
    }
    let mut message_type = None;
    let mut at = 240;
    while at < request.len() {
        match request[at] {
            0 => at += 1,
            255 => break,
            code => {
                let length = usize::from(*request.get(at + 1)?);
                if code == 53 && length == 1 {
                    message_type = request.get(at + 2).copied();
                }
                at += 2 + length;
            }
        }
    }
    let reply_type = match message_type? {
        1 => 2, // DISCOVER -> OFFER
        3 => 5, // REQUEST -> ACK
        _ => return None,
    };
    let mut hardware = [0u8; 6];
    hardware.copy_from_slice(&request[28..34]);
    let index = match leases.iter().position(|lease| *lease == hardware) {
        Some(index) => index,
        None => {
            if leases.len() == MAX_LEASES {
                leases.remove(0);
            }
            leases.push(hardware);
            leases.len() - 1
        }
    };
    let address = [server[0], server[1], server[2], FIRST_HOST + index as u8];
    let mut reply = vec![0u8; 240];
    reply[0] = 2;
    reply[1] = 1;
    reply[2] = 6;
    reply[4..8].copy_from_slice(&request[4..8]);
    reply[10..12].copy_from_slice(&request[10..12]);
    reply[16..20].copy_from_slice(&address);
    reply[20..24].copy_from_slice(&server);
    reply[28..44].copy_from_slice(&request[28..44]);
    reply[236..240].copy_from_slice(&MAGIC);
    reply.extend_from_slice(&[53, 1, reply_type]);
    reply.extend_from_slice(&[54, 4]);
    reply.extend_from_slice(&server);
    reply.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]);
    reply.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
    reply.extend_from_slice(&[3, 4]);
    reply.extend_from_slice(&server);
    reply.push(255);
    Some(reply)
}
