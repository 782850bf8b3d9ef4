console.log('xquant');
