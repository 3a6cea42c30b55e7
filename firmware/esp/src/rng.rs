//! Randomness for TLS keys and WebSocket masks: the chip's random number generator, which
//! draws on radio noise while Wi-Fi runs.

use esp_hal::rng::Rng;

/// The hardware generator as `rand_core` 0.6 wants it (embedded-tls, embedded-websocket).
#[derive(Debug, Clone, Copy, Default)]
pub struct Entropy;

impl rand_core::RngCore for Entropy {
    fn next_u32(&mut self) -> u32 {
        Rng::new().random()
    }

    fn next_u64(&mut self) -> u64 {
        let rng = Rng::new();
        (u64::from(rng.random()) << 32) | u64::from(rng.random())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Rng::new().read(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Entropy {}
