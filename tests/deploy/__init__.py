"""Deploy artifacts, by subject: images, Kubernetes manifests and their NetworkPolicies, the GitLab pipeline."""
