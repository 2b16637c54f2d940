"""collabfeat.transform"""
