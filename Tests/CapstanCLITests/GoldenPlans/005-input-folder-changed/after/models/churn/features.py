FEATURES = ['tenure', 'plan']
