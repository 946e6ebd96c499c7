//! Training algorithms: SFT, reward model, PPO, DPO. Losses and advantage estimators are small
//! pure functions (losses.rs), unit-tested against reference values.
pub mod dpo;
pub mod losses;
pub mod optim;
pub mod ppo;
pub mod rm;
pub mod sft;
