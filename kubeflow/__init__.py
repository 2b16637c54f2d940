"""collabfeat.kubeflow"""
