"""Training the feedback module: config, data + precompute, objectives (fast / standard / none; epsilon
prediction or flow matching; text-to-video Wan on video-caption pairs: `ilf.train.video`), loop, DDP.

    from ilf.train import load_train_config, precompute, train
    cfg = load_train_config("configs/train/toy_t2i.yaml")
    precompute(cfg, cfg.data.latents_dir)
    final_dir = train(cfg, "results/runs/toy_t2i")      # then ilf.load_feedback(pipe, final_dir)
"""
from .config import DataConfig, OptimConfig, TrainConfig, load_train_config, parse_overrides
from .loop import train
from .flow import FlowObjective, euler_equivalent_velocity, euler_teacher
from .objectives import Objective, ddim_equivalent_noise, dpm_solver_pp_teacher, make_objective
from .precompute import precompute

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "load_train_config", "parse_overrides", "train",
           "precompute", "Objective", "FlowObjective", "make_objective", "dpm_solver_pp_teacher",
           "ddim_equivalent_noise", "euler_teacher", "euler_equivalent_velocity"]
