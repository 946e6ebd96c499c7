//! Dynamic loss scaling for fp16 (as torch.cuda.amp.GradScaler): the loss is multiplied by a
//! large scale before backward so small gradients survive fp16; a step whose gradients overflow
//! is skipped and the scale halved; after enough good steps in a row it doubles.
const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u32 = 2000;

#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// After a step: `applied` is false when its gradients overflowed.
    pub fn update(&mut self, applied: bool) {
        if applied {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }

    /// Restores a saved scale (resuming from a checkpoint).
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
        self.good_steps = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_a_long_good_run_doubles() {
        let mut s = LossScaler::default();
        s.update(false);
        s.update(false);
        assert_eq!(s.scale(), INITIAL_SCALE / 4.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale(), INITIAL_SCALE / 4.0);
        s.update(true);
        assert_eq!(s.scale(), INITIAL_SCALE / 2.0);
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale(), 1.0, "never below 1");
    }
}
