def load_movielens(path):
    raise NotImplementedError
